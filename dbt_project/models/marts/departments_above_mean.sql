with hires as (
    select * from {{ ref('stg_core__hired_employees') }}
),

departments as (
    select * from {{ ref('stg_core__departments') }}
),

years as (
    select distinct hired_year as year from hires
),

hires_per_department as (
    -- Every department in every year, with 0 where it hired nobody: the mean counts them.
    select
        years.year,
        departments.department_id as id,
        departments.department_name as department,
        count(hires.employee_id) as hired
    from years
    cross join departments
    left join hires
        on hires.department_id = departments.department_id
        and hires.hired_year = years.year
    group by years.year, departments.department_id, departments.department_name
),

yearly_mean as (
    select
        year,
        avg(hired) as mean_hired
    from hires_per_department
    group by year
),

final as (
    select
        hires_per_department.year,
        hires_per_department.id,
        hires_per_department.department,
        hires_per_department.hired
    from hires_per_department
    inner join yearly_mean on hires_per_department.year = yearly_mean.year
    where hires_per_department.hired > yearly_mean.mean_hired
    order by hires_per_department.year, hires_per_department.hired desc, hires_per_department.id
)

select * from final
