"""Messages, logs and backup manifests name the database without its password, whatever form
of connection string libpq was given."""

import pytest

from loader.db.connect import redact, scrub


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("postgresql://app:S3cret@db:5432/x", "postgresql://app:***@db:5432/x"),
        (
            "postgresql://app@db/x?password=S3cret&sslmode=disable",
            "postgresql://app@db/x?password=***&sslmode=disable",
        ),
        ("host=db user=app password=S3cret dbname=x", "host=db user=app password=*** dbname=x"),
        ("host=db password='S3 c\\'ret' dbname=x", "host=db password=*** dbname=x"),
        (
            "postgresql://app@/x?host=/var/run/postgresql",
            "postgresql://app@/x?host=/var/run/postgresql",
        ),
    ],
)
def test_a_password_in_any_libpq_form_is_hidden(given, shown):
    assert redact(given) == shown


def test_a_driver_message_quoting_the_password_is_scrubbed():
    url = "postgresql://app:Top%ZZSecret@db/x"
    assert scrub('invalid percent-encoded token: "Top%ZZSecret"', url) == (
        'invalid percent-encoded token: "***"'
    )
