"""System models of a run: how long computing takes (:mod:`~harness.models.compute`) and when
workers fail (:mod:`~harness.models.faults`); the network's cost model is :mod:`harness.cost`,
real ranks' injected slowdown :mod:`harness.calibration.slowdown`.

They live in ``harness`` (not ``simulators``) because a config validates their specs: so
``harness.config`` never imports the simulators, and the packages import one way
(``simulators`` -> ``harness``; ``tests/test_imports.py``). ``simulators.compute`` and
``simulators.faults`` re-export them for code written before the move.
"""
