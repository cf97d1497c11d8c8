with hires as (
    select * from {{ ref('int_hires_per_department_job') }}
),

counted as (
    -- Departments, and jobs, that share a name are counted together under that name.
    select
        year,
        department_name as department,
        job_title as job,
        cast(sum(q1) as bigint) as q1,
        cast(sum(q2) as bigint) as q2,
        cast(sum(q3) as bigint) as q3,
        cast(sum(q4) as bigint) as q4,
        cast(sum(hired) as bigint) as hired
    from hires
    group by year, department_name, job_title
),

final as (
    select * from counted
)

select * from final
