{#- Fails with every row for which `expression`, over the model's own columns, is not true. -#}
{% test expression_is_true(model, expression) %}
    select *
    from {{ model }}
    where not coalesce({{ expression }}, false)
{% endtest %}
