"""The backend registry (``harness.capabilities.BACKENDS``) against the interpreters.

Every interpreter handles the pattern of every op of every feature its backend declares (and
every op that needs no feature); every backend row loads; configs and the CLI list exactly
the registry's selectable backends."""
import inspect

import pytest

from harness import capabilities, config, ops
from harness.capabilities import BACKENDS

# ops by the feature they need (None: every backend must run them)
OPS = [c for _, c in inspect.getmembers(ops, inspect.isclass)
       if c.__module__ == "harness.ops" and hasattr(c, "__dataclass_fields__") and hasattr(c, "pattern")]


def _patterns(name):
    b = BACKENDS[name]
    if b.kind == "simulated":
        cls = b.load()
        return set(cls.patterns(cls.__new__(cls)))
    from harness.backends.rank import RankDriver

    b.load()  # the transport imports
    return set(RankDriver.patterns(RankDriver.__new__(RankDriver)))


def test_the_op_list_is_complete():
    names = {c.__name__ for c in OPS}
    assert {"Grad", "Compute", "AllReduce", "AllGather", "Gossip", "Neighbors", "Put", "Get", "Accumulate", "Exchange",
            "Rand", "Rate", "Start", "Wait", "Send", "Recv", "Record", "LoadState", "SaveState"} <= names
    assert {c.pattern for c in OPS} <= set(ops.PATTERNS)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_interpreter_handles_the_ops_of_the_features_it_declares(name):
    if name == "mpi":
        pytest.importorskip("mpi4py", reason="mpi4py is not installed")
    handled = _patterns(name)
    supports = BACKENDS[name].supports
    for op in OPS:
        feature = getattr(op, "feature", None)
        if feature is None or feature in supports:
            assert op.pattern in handled, f"{name} declares {feature or 'every op'} but cannot run {op.__name__}"


def test_configs_accept_exactly_the_selectable_backends():
    assert config.BACKENDS == capabilities.SELECTABLE == ("simpy", "stacked", "mpi", "torch")
    assert capabilities.REAL == ("mpi", "torch") and capabilities.SIMULATED == ("simpy", "stacked")
    from simulators import BACKENDS as SIM

    assert sorted(SIM) == ["simpy", "stacked"] and SIM["stacked"].__name__ == "StackedBackend"
