#!/usr/bin/env bash
# Every GPU check in one script, for a lent GPU machine (see benchmarks/README.md).
# Expects: wheels for missing packages in .whl/, Tiny Shakespeare under .gpu/data.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:${PYTHONPATH:-} GENFORGE_DATA=$PWD/.gpu/data GENFORGE_CACHE=/tmp/gfcache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/device.txt"
timeout 330 python3 benchmarks/bench_gpu_shakespeare.py 2>&1 | tee "$OUT/shakespeare.log"
cp benchmarks/results/gpt_shakespeare_gpu.* "$OUT/" 2>/dev/null
timeout 150 python3 benchmarks/bench_generation.py --recompute-batch16-repeats 3 2>&1 | tee "$OUT/generation.log"
cp benchmarks/results/generation_gpu.* "$OUT/" 2>/dev/null
python3 -m genforge sample runs/gpu-shakespeare --prompt "JULIET:" --max-new-tokens 100 --seed 0 --device cuda 2>&1 | tail -5 | tee "$OUT/sample.txt"
