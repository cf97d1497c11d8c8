-- Report 2 follows from report 1 of the same build: both are built from one table, one
-- snapshot of core, never from the live views. Fails with every row of report 2 whose mean is
-- not report 1's hires of that year over every department in that snapshot, and with every
-- year and department name whose hires in report 2 exceed report 1's under that name (equal
-- when the name is unique; departments that share a name share a row of report 1).
with hires_by_quarter as (
    select * from {{ ref('hires_by_quarter') }}
),

departments_above_mean as (
    select * from {{ ref('departments_above_mean') }}
),

hires_per_department_job as (
    select * from {{ ref('int_hires_per_department_job') }}
),

snapshot as (
    select distinct department_count from hires_per_department_job
),

yearly_hires as (
    select year, sum(hired) as hired
    from hires_by_quarter
    group by year
),

hires_per_name as (
    select year, department, sum(hired) as hired
    from hires_by_quarter
    group by year, department
),

reported_per_name as (
    select year, department, sum(hired) as hired
    from departments_above_mean
    group by year, department
),

wrong_means as (
    select
        departments_above_mean.year,
        departments_above_mean.department,
        'mean_hired' as disagreement
    from departments_above_mean
    cross join snapshot
    left join yearly_hires on departments_above_mean.year = yearly_hires.year
    where
        yearly_hires.hired is null
        or abs(
            departments_above_mean.mean_hired - yearly_hires.hired / snapshot.department_count
        ) > 1e-9
),

wrong_hires as (
    select
        reported_per_name.year,
        reported_per_name.department,
        'hired' as disagreement
    from reported_per_name
    left join hires_per_name
        on reported_per_name.year = hires_per_name.year
        and reported_per_name.department = hires_per_name.department
    where hires_per_name.hired is null or reported_per_name.hired > hires_per_name.hired
),

final as (
    select * from wrong_means
    union all
    select * from wrong_hires
)

select * from final
