"""The postgres destination the raw loader hands dlt answers for its capabilities what dlt's own
answers, however often it is asked, and no caller's change to its answer reaches another."""

from __future__ import annotations

from functools import partial

import dlt
from dlt.common.schema import Schema

from loader.flow.land import with_fixed_capabilities

CREDENTIALS = "postgresql://loader:unused@localhost:5432/db"


def comparable(capabilities) -> dict:
    """The capabilities as values (dlt builds a new functools.partial, equal only to itself,
    for each answer)."""
    return {
        key: (value.func, value.args, value.keywords) if isinstance(value, partial) else value
        for key, value in dict(capabilities).items()
    }


def test_its_capabilities_are_dlts_own_for_every_naming_and_each_caller_has_a_copy():
    fixed = with_fixed_capabilities(dlt.destinations.postgres(credentials=CREDENTIALS))
    plain = dlt.destinations.postgres(credentials=CREDENTIALS)
    for naming in (None, Schema("raw").naming, Schema("x").naming):
        for _ in range(3):
            assert comparable(fixed.capabilities(naming=naming)) == comparable(
                plain.capabilities(naming=naming)
            )
    first = fixed.capabilities()
    first.max_identifier_length = 1
    assert fixed.capabilities().max_identifier_length == plain.capabilities().max_identifier_length
