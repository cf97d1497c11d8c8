with source as (
    select * from {{ source('core', 'departments') }}
),

final as (
    select
        id as department_id,
        department as department_name
    from source
)

select * from final
