-- Report 2 must follow from report 1: per year, the departments whose hires summed over
-- report 1 exceed that year's mean over all departments (0 for those absent), with that sum.
with by_quarter as (
    select * from {{ ref('hires_by_quarter') }}
),

departments as (
    select * from {{ ref('stg_core__departments') }}
),

department_totals as (
    select year, department, sum(q1 + q2 + q3 + q4) as hired
    from by_quarter
    group by year, department
),

yearly_mean as (
    select
        department_totals.year,
        sum(department_totals.hired) / (select count(*) from departments) as mean_hired
    from department_totals
    group by department_totals.year
),

expected as (
    select department_totals.year, department_totals.department, department_totals.hired
    from department_totals
    inner join yearly_mean on department_totals.year = yearly_mean.year
    where department_totals.hired > yearly_mean.mean_hired
),

reported as (
    select year, department, sum(hired) as hired
    from {{ ref('departments_above_mean') }}
    group by year, department
),

final as (
    select coalesce(expected.year, reported.year) as year,
        coalesce(expected.department, reported.department) as department,
        expected.hired as expected_hired,
        reported.hired as reported_hired
    from expected
    full outer join reported
        on expected.year = reported.year and expected.department = reported.department
    where expected.hired is distinct from reported.hired
)

select * from final
