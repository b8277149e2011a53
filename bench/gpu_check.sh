#!/usr/bin/env bash
# One device session's checks (see bench/README.md): the CUDA tests, then the engine bench.
# Runs with the GPU machine's own torch/triton/transformers: PYTHONPATH=., no pip.
set -o pipefail
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" | tee -a "$OUT/device.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -x tests/perturb/test_triton.py tests/perturb/test_engine_cuda.py 2>&1 | tee "$OUT/gpu-tests.log"
timeout 300 python3 bench/engine.py --device cuda --repeats 3 --json "$OUT/engine-cuda.json" 2>&1 | tee "$OUT/engine-cuda.log"
