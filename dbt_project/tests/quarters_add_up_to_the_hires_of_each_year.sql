-- Fails with every year, department and job whose q1..q4 do not add up to its hires.
with hires as (
    select * from {{ ref('stg_core__hired_employees') }}
),

departments as (
    select * from {{ ref('stg_core__departments') }}
),

jobs as (
    select * from {{ ref('stg_core__jobs') }}
),

expected as (
    select
        hires.hired_year as year,
        departments.department_name as department,
        jobs.job_title as job,
        count(*) as hired
    from hires
    inner join departments on hires.department_id = departments.department_id
    inner join jobs on hires.job_id = jobs.job_id
    group by 1, 2, 3
),

reported as (
    select year, department, job, q1 + q2 + q3 + q4 as hired
    from {{ ref('hires_by_quarter') }}
),

final as (
    select coalesce(expected.year, reported.year) as year,
        coalesce(expected.department, reported.department) as department,
        coalesce(expected.job, reported.job) as job,
        expected.hired as expected_hired,
        reported.hired as reported_hired
    from expected
    full outer join reported
        on expected.year = reported.year
        and expected.department = reported.department
        and expected.job = reported.job
    where expected.hired is distinct from reported.hired
)

select * from final
