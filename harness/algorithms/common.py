"""Pieces several algorithms share (generators are composed with ``yield from``)."""
from harness.ops import AllReduce, retrying


def outer_step(theta, x, outer, outer_state):
    """DiLoCo-style outer step: ``Delta = mean_i (theta - x_i)`` (all-reduce, survivors only
    after a crash), ``theta <- theta + outer(Delta)``. Returns ``(theta, outer_state)``."""
    delta = yield from retrying(AllReduce(theta - x, op="mean"))
    step, outer_state = outer.update(delta, outer_state, theta)
    return theta + step, outer_state
