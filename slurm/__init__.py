"""The sbatch templates (``array.sbatch``, ``mpi.sbatch``, ``torch.sbatch``) as package data.

A package, not a plain folder, so that a wheel (``pip install .``, not editable) ships them:
:mod:`harness.slurm` reads them with ``importlib.resources`` wherever the project is installed.
They stay plain Jinja2/bash files that a user can copy and edit.
"""
