#!/usr/bin/env bash
# Every GPU check in one script, for a lent GPU machine (see benchmarks/README.md); a 15-minute
# session runs benchmarks/gpu_session.sh instead (one call, a time budget per part).
# Expects: wheels for missing packages in .whl/, Tiny Shakespeare under .gpu/data.
# Usage: bash benchmarks/gpu_check.sh [train] [generation] [static] [suite]
# static (~2-5 min): the static decode step's CUDA-graph path (issue #20): its tests on the GPU (tokens
# of the uncached path, greedy and sampled, captured and replayed), then bench_generation's workers
# for the rows that matter (6x384, 500 tokens; each worker fails if the graph's greedy tokens differ).
# suite: the whole test suite on the GPU (GENFORGE_TEST_DEVICE=cuda); carry pydantic's wheels
# (pydantic, pydantic-core, annotated-types, typing-inspection) in .whl/, the machine lacks them.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
what=${*:-train generation}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:${PYTHONPATH:-} GENFORGE_DATA=$PWD/.gpu/data GENFORGE_CACHE=/tmp/gfcache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/device.txt"
if [[ $what == *train* ]]; then
  # the preset and its variants against nanoGPT's own train.py (GENFORGE_PEERS: carry .gpu/peers/nanoGPT)
  GENFORGE_PEERS=$PWD/.gpu/peers timeout 300 python3 benchmarks/bench_gpu_shakespeare.py --budget-s 280 \
    --out "$OUT" 2>&1 | tee "$OUT/shakespeare.log"
fi
if [[ $what == *generation* ]]; then
  timeout 150 python3 benchmarks/bench_generation.py --recompute-batch16-repeats 3 2>&1 | tee "$OUT/generation.log"
  cp benchmarks/results/generation_gpu.* "$OUT/" 2>/dev/null
fi
if [[ $what == *static* ]]; then
  GENFORGE_TEST_DEVICE=cuda timeout 90 python3 -m pytest -q -rs -p no:cacheprovider tests/test_static_decode.py \
    tests/test_decode_step.py 2>&1 | tee "$OUT/static_tests.log"
  for run in "static 1" "kv 1" "window-static 16" "window 16" "static 16"; do
    timeout 30 python3 benchmarks/bench_generation.py worker $run 500 3 2>&1 | tee -a "$OUT/static_bench.jsonl"
  done
  for run in "window-static-inductor 16" "static-inductor 1"; do  # Inductor's compile first (capture_s)
    timeout 120 python3 benchmarks/bench_generation.py worker $run 500 3 2>&1 | tee -a "$OUT/static_bench.jsonl"
  done
fi
if [[ $what == *suite* ]]; then
  # every test on the GPU; tests needing RDKit or the MiniLM weights skip where those are missing
  GENFORGE_TEST_DEVICE=cuda timeout 540 python3 -m pytest -q -rs -p no:cacheprovider tests 2>&1 | tee "$OUT/suite_cuda.log"
fi
