#!/usr/bin/env bash
# VAE on a lent GPU: CUDA + bf16 autocast training, sampling and image eval end to end (~1 min).
# Needs scikit-learn, scipy and pillow (the digits data set and the metrics); same setup as gpu_check.sh.
# Usage: bash benchmarks/gpu_check_vae.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=src:${PYTHONPATH:-} GENFORGE_CACHE=/tmp/gfcache PYTHONUNBUFFERED=1
run=runs/gpu-vae-digits
rm -rf "$run"
timeout 120 python3 -m genforge train vae-digits model.conditional=true train.max_steps=600 train.device=cuda \
  --run-dir "$run" --no-progress 2>&1 | tail -4 | tee "$OUT/vae_train.log"
timeout 60 python3 -m genforge sample "$run" --device cuda --out "$OUT/vae_samples.png" 2>&1 | tee -a "$OUT/vae_train.log"
timeout 60 python3 -m genforge sample "$run" --device cuda --interpolate test:0 test:1 --out "$OUT/vae_slerp.png" 2>&1 | tee -a "$OUT/vae_train.log"
timeout 120 python3 -m genforge eval "$run" --device cuda --iwae-k 50 2>&1 | tee "$OUT/vae_eval.log"
