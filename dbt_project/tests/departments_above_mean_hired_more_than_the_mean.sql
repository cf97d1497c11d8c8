-- Fails with every row of report 2 whose department did not hire more than that year's mean.
-- The mean stands beside the hires, taken from the same snapshot of core.
with departments_above_mean as (
    select * from {{ ref('departments_above_mean') }}
),

final as (
    select year, id, department, hired, mean_hired
    from departments_above_mean
    where hired <= mean_hired
)

select * from final
