with source as (
    select * from {{ source('core', 'hired_employees') }}
),

final as (
    select
        id as employee_id,
        name as employee_name,
        datetime as hired_at,
        -- Years and quarters are taken in UTC whatever the server's or session's TimeZone.
        cast(extract(year from datetime at time zone 'UTC') as integer) as hired_year,
        cast(extract(quarter from datetime at time zone 'UTC') as integer) as hired_quarter,
        department_id,
        job_id
    from source
)

select * from final
