-- One SQL statement, so one snapshot of core: the hires, departments and jobs below are read
-- as they were at one instant, however many writes commit while the build runs.
with hires as (
    select * from {{ ref('stg_core__hired_employees') }}
),

departments as (
    select * from {{ ref('stg_core__departments') }}
),

jobs as (
    select * from {{ ref('stg_core__jobs') }}
),

departments_counted as (
    -- Every department, hires or not: the divisor of each year's mean in report 2.
    select count(*) as department_count from departments
),

joined as (
    select
        hires.hired_year,
        hires.hired_quarter,
        departments.department_id,
        departments.department_name,
        jobs.job_id,
        jobs.job_title
    from hires
    inner join departments on hires.department_id = departments.department_id
    inner join jobs on hires.job_id = jobs.job_id
),

counted as (
    select
        hired_year as year,
        department_id,
        department_name,
        job_id,
        job_title,
        count(*) filter (where hired_quarter = 1) as q1,
        count(*) filter (where hired_quarter = 2) as q2,
        count(*) filter (where hired_quarter = 3) as q3,
        count(*) filter (where hired_quarter = 4) as q4,
        count(*) as hired
    from joined
    group by hired_year, department_id, department_name, job_id, job_title
),

final as (
    select
        counted.year,
        counted.department_id,
        counted.department_name,
        counted.job_id,
        counted.job_title,
        counted.q1,
        counted.q2,
        counted.q3,
        counted.q4,
        counted.hired,
        departments_counted.department_count,
        -- When the statement began: every write committed before it is in this snapshot.
        statement_timestamp() as snapshot_at
    from counted
    cross join departments_counted
)

select * from final
