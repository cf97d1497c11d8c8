{#- Compares the model with `to` group by group (`group_by`: columns both have). Fails with
    every group of the model whose `aggregate` (by default the sum of the column) does not stand
    in `operator` to `to_aggregate` over the same group of `to`, or that `to` lacks. -#}
{% test aggregate_agrees(
    model, column_name, group_by, to, to_aggregate, aggregate=none, operator='='
) %}
    {%- set groups = group_by | join(', ') %}
    with tested as (
        select {{ groups }}, {{ aggregate or 'sum(' ~ column_name ~ ')' }} as value
        from {{ model }}
        group by {{ groups }}
    ),

    compared as (
        select {{ groups }}, {{ to_aggregate }} as value
        from {{ to }}
        group by {{ groups }}
    ),

    final as (
        select
            {%- for column in group_by %}
            tested.{{ column }},
            {%- endfor %}
            tested.value,
            compared.value as value_in_to
        from tested
        left join compared on
            {%- for column in group_by %}
            {% if not loop.first %}and {% endif %}tested.{{ column }} = compared.{{ column }}
            {%- endfor %}
        where compared.value is null or not (tested.value {{ operator }} compared.value)
    )

    select * from final
{% endtest %}
