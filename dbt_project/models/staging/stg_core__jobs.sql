with source as (
    select * from {{ source('core', 'jobs') }}
),

final as (
    select
        id as job_id,
        job as job_title
    from source
)

select * from final
