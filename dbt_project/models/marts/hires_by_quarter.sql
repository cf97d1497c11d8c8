with hires as (
    select * from {{ ref('stg_core__hired_employees') }}
),

departments as (
    select * from {{ ref('stg_core__departments') }}
),

jobs as (
    select * from {{ ref('stg_core__jobs') }}
),

joined as (
    select
        hires.hired_year,
        hires.hired_quarter,
        departments.department_name,
        jobs.job_title
    from hires
    inner join departments on hires.department_id = departments.department_id
    inner join jobs on hires.job_id = jobs.job_id
),

counted as (
    select
        hired_year as year,
        department_name as department,
        job_title as job,
        count(*) filter (where hired_quarter = 1) as q1,
        count(*) filter (where hired_quarter = 2) as q2,
        count(*) filter (where hired_quarter = 3) as q3,
        count(*) filter (where hired_quarter = 4) as q4
    from joined
    group by hired_year, department_name, job_title
),

final as (
    select * from counted
    order by year, department collate "C", job collate "C"
)

select * from final
