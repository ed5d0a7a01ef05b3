"""Calibrating the simulators from a real run (issue [17]); see harness.calibration.cli."""
