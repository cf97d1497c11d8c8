"""Object storage and folders named by URL: how a URL is shown (secrets hidden) and the error
for storage that cannot be reached. Shared by the loader's inputs and the backups."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET_QUERY = re.compile(r"(key|secret|token|sig|signature|password|credential)", re.I)


class StorageUnavailable(RuntimeError):
    """The storage holding the input or the backups cannot be reached, denies access, or has no
    such bucket; the message names the URL with its secrets hidden."""


def is_url(where: object) -> bool:
    """A URL with a protocol (s3://, gs://, file://), not a local path."""
    return "://" in str(where)


def shown_url(url: str) -> str:
    """`url` fit for messages, logs and the ledger: user info and secret query values hidden."""
    parts = urlsplit(url)
    if not is_url(url):
        return url
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urlencode(
        [(k, "***" if _SECRET_QUERY.search(k) else v) for k, v in parse_qsl(parts.query)],
        safe="*",
    )
    return urlunsplit(parts._replace(netloc=netloc, query=query))
