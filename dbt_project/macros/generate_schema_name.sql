{#- Stable schema names (`staging`, `marts`) instead of dbt's `<target>_<custom>`: BI tools and
    the read-only role point at `marts` whatever the target is called. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {{ (custom_schema_name or target.schema) | trim }}
{%- endmacro %}
