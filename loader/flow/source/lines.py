"""One line of an export as the strict reader reads it: decoded (what does not decode only
spoils its row), split into the table's fields, trimmed, an empty field as None.

`blocks` reads most lines faster, but always to this definition (tests/unit/test_block_reader.py).
"""

from __future__ import annotations

import csv

from loader.flow.errors import InputError
from loader.tables import Table

DEFAULT_ENCODING = "utf-8"
NOT_UTF8 = "bytes that are not UTF-8"
NUL_BYTE = "NUL byte"


def split_fields(text: str, table: Table, where: str) -> list[str | None]:
    """Split one line into the table's fields, trimmed, an empty field as None."""
    if '"' in text:
        try:
            fields = next(csv.reader([text], strict=True))
        except csv.Error as error:
            reason = "unclosed quote" if "end of data" in str(error) else f"bad quoting ({error})"
            raise InputError(f"{where}: {reason}") from None
    else:
        fields = text.split(",")
    if len(fields) != len(table.columns):
        raise InputError(
            f"{where}: expected {len(table.columns)} fields "
            f"({', '.join(table.column_names)}), found {len(fields)}"
        )
    return [value.strip() or None for value in fields]


def decode_line(raw: bytes, encoding: str = "utf-8") -> tuple[str, str | None]:
    """Decode one line; undecodable bytes and NULs are escaped and named, never fatal."""
    try:
        text, problem = raw.decode(encoding), None
    except UnicodeDecodeError:
        text = raw.decode(encoding, "backslashreplace")
        problem = NOT_UTF8 if encoding == DEFAULT_ENCODING else f"bytes that are not {encoding}"
    text, escaped = escape_text(text)
    return text, problem or escaped


def escape_text(text: str) -> tuple[str, str | None]:
    """Text PostgreSQL can store, and what was wrong with it: a lone surrogate (from JSON's
    `\\ud800`, not UTF-8) or a NUL is escaped and named, so the row is kept and rejected."""
    problem = None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text, problem = text.encode("utf-8", "backslashreplace").decode("utf-8"), NOT_UTF8
    if "\x00" in text:
        text, problem = text.replace("\x00", "\\x00"), problem or NUL_BYTE
    return text, problem
