#!/usr/bin/env bash
# The GPU checks of issue [9] as one short script for a machine with a CUDA GPU (about 5 minutes):
# the GPU tests (CUDA placement, stacked backend on the GPU, torch.distributed NCCL on 1 rank and
# gloo with CUDA tensors on 2 ranks), then the stacked-models benchmark on the GPU.
# Needs a CUDA build of torch in the venv; record the printed tables in docs/benchmarks.md.
#   bash benchmarks/gpu_check.sh [.venv]
set -uo pipefail
VENV=${1:-.venv}
"$VENV/bin/python" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.__version__, torch.cuda.get_device_name(0))" || exit 2
"$VENV/bin/python" -m pytest -q -m gpu tests/ -rs
rc=$?
"$VENV/bin/python" benchmarks/stacked_models.py --device cuda --n 1 8 32 128
exit $rc
