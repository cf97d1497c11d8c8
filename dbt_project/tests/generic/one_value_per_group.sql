{#- Fails with every group of `group_by` (the whole model if none) in which the column takes
    more than one value. -#}
{% test one_value_per_group(model, column_name, group_by=[]) %}
    select
        {%- for column in group_by %}
        {{ column }},
        {%- endfor %}
        count(distinct {{ column_name }}) as distinct_values
    from {{ model }}
    {%- if group_by %}
    group by {{ group_by | join(', ') }}
    {%- endif %}
    having count(distinct {{ column_name }}) > 1
{% endtest %}
