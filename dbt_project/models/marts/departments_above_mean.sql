with hires as (
    select * from {{ ref('int_hires_per_department_job') }}
),

hires_per_department as (
    select
        year,
        department_id as id,
        department_name as department,
        cast(sum(hired) as bigint) as hired
    from hires
    group by year, department_id, department_name
),

yearly_mean as (
    -- Divided by every department of the snapshot, so one that hired nobody counts as 0.
    -- department_count is the same on every row: grouping by it keeps one mean per year.
    select
        year,
        sum(hired) / department_count as mean_hired
    from hires
    group by year, department_count
),

final as (
    select
        hires_per_department.year,
        hires_per_department.id,
        hires_per_department.department,
        hires_per_department.hired,
        yearly_mean.mean_hired
    from hires_per_department
    inner join yearly_mean on hires_per_department.year = yearly_mean.year
    where hires_per_department.hired > yearly_mean.mean_hired
)

select * from final
