"""Every gate a run may be handed has each method of the `Gate` protocol with the protocol's
signature. `Gate` is a typing Protocol: Python itself checks such a class at most by the names
it has, never by the parameters of its methods."""

from __future__ import annotations

import inspect

import pytest

from loader.flow.judge.checkpoints import InProcessGate
from loader.flow.judge.gate import Gate
from loader.flow.judge.gate_process import ForkedGate
from loader.flow.judge.renumbering import RenumberingGate

GATES = [InProcessGate, ForkedGate, RenumberingGate]


def protocol_methods() -> list[str]:
    return sorted(
        name
        for name, value in vars(Gate).items()
        if inspect.isfunction(value) and not name.startswith("_")
    )


def signature(method) -> inspect.Signature:
    """The method's signature with its annotations evaluated, so that two spellings of one
    type compare equal and a different type does not."""
    return inspect.signature(method, eval_str=True)


def test_the_protocol_declares_what_a_run_asks_of_a_gate():
    # Pinned, so that the tests below cannot pass by finding no method to compare.
    assert protocol_methods() == ["build_docs", "close", "submit", "submit_docs"]


@pytest.mark.parametrize("method", protocol_methods())
@pytest.mark.parametrize("gate", GATES, ids=lambda gate: gate.__name__)
def test_every_gate_has_each_protocol_method_with_its_signature(gate, method):
    assert inspect.isfunction(getattr(gate, method, None)), f"{gate.__name__} has no {method}"
    assert signature(getattr(gate, method)) == signature(getattr(Gate, method))
