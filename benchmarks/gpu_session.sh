#!/usr/bin/env bash
# One GPU session (issue #20) in ONE device call: everything a 15-minute lease should run.
#
# Budget (seconds; the device call's timeout_s is 540, the machine's start comes on top):
#   part                                              cap    what limits it
#   0  wheels + device info                            15
#   c  gpt-shakespeare-char-gpu variants vs nanoGPT   300    bench_gpu_shakespeare.py --budget-s (skips runs that won't fit)
#   b  bench_generation.py workers, one per row       150    each under timeout 40, a JSON line as each ends
#   a1 tests of the GPU paths on CUDA                   40    static decode, decode step, early stopping
#   a2 the whole test suite on CUDA                     70    pytest-xdist -n 8, pytest-timeout 120 s per test
#   d  gpt-jsb-gpu, if that preset exists            rest    SIGTERM saves a checkpoint; its best is evaluated
#   total                                             525    TOTAL_S; each part gets min(cap, what is left)
# c runs first: its numbers are the session's point; the others are capped and cannot eat it.
#
# Usage:
#   here, once:  bash benchmarks/gpu_session.sh --prepare   (fills the ignored .gpu/ and .whl/)
#   on the GPU:  run(command="GENFORGE_COMMIT=<sha> bash benchmarks/gpu_session.sh", carry=[".gpu", ".whl"],
#                    timeout_s=540)
#   CPU smoke:   bash benchmarks/gpu_session.sh --smoke     (every part, tiny, ~3 min; nothing measured;
#                bench_generation's 13 workers need more than its 60 s on a busy 2-core machine)
# Everything lands in $OUT as gpu_session_<device>.tar.gz (logs, JSON, tables; re-packed after
# every part, so a kill keeps what finished) and gpu_session_<device>.md (the summary).
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-gpu}
TOTAL_S=${TOTAL_S:-525}
START=$SECONDS

if [[ $MODE == --prepare ]]; then
  # Tiny Shakespeare, the JSB chorales and nanoGPT travel in .gpu/ (ignored; name it in carry);
  # As wheels in .whl/, what the GPU image lacks: pydantic and its helpers (typing_extensions too:
  # pydantic needs >= 4.16), and pretty_midi with its own (gpt-jsb-gpu's MIDI previews).
  src=${GENFORGE_DATA:-../shared/data}
  mkdir -p .gpu/data .gpu/peers
  cp -r "$src/tinyshakespeare" "$src/jsb-chorales" .gpu/data/ || exit 1
  rm -rf .gpu/peers/nanoGPT && cp -r "${GENFORGE_PEERS:-../shared/peers}/nanoGPT" .gpu/peers/ || exit 1
  chmod -R u+w .gpu
  py=${PYTHON:-.venv/bin/python}
  for pkg in pydantic pydantic_core annotated_types typing_inspection typing_extensions pretty_midi mido \
    importlib_resources; do
    ver=$("$py" -c "import importlib.metadata as m; print(m.version('$pkg'))") || exit 1
    ls .whl/"${pkg}"-"${ver}"-*.whl >/dev/null 2>&1 && continue
    "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      -d .whl "${pkg//_/-}==$ver" || exit 1
  done
  du -sh .gpu .whl
  exit 0
fi

if [[ $MODE == --smoke ]]; then
  PY=${PYTHON:-.venv/bin/python}
  export GENFORGE_DATA=${GENFORGE_DATA:-$(cd .. && pwd)/shared/data} GENFORGE_PEERS=${GENFORGE_PEERS:-$(cd .. && pwd)/shared/peers}
  OUT=${OUT:-/tmp/gpu_session_smoke}
  DEVICE=cpu-smoke
else
  PY=${PYTHON:-python3}
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site
  fi
  export GENFORGE_DATA=$PWD/.gpu/data GENFORGE_PEERS=$PWD/.gpu/peers
  OUT=${OUT:-/tmp/gpu_out}
  DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9.\n-' '_')
  DEVICE=${DEVICE:-no-gpu}
fi
export PYTHONPATH=src:${PYTHONPATH:-} GENFORGE_CACHE=/tmp/gfcache PYTHONUNBUFFERED=1
WORK=/tmp/gpu_session/$DEVICE
RUNS=/tmp/gpu_session_runs  # checkpoints stay out of the archive
rm -rf "$WORK" "$RUNS"; mkdir -p "$WORK" "$RUNS" "$OUT"
SUMMARY=$WORK/summary.md HEAD=$WORK/.head.md PARTS=$WORK/.parts.md DETAILS=$WORK/.details.md

left() { echo $((TOTAL_S - (SECONDS - START))); }
cap() { local l; l=$(left); echo $(( $1 < l - 5 ? $1 : l - 5 )); }  # a part's seconds: its cap or what is left
pack() {  # the summary (device, parts table, each part's table) and the archive, into $OUT
  cat "$HEAD" "$PARTS" > "$SUMMARY"; echo "total $((SECONDS - START)) s of $TOTAL_S" >> "$SUMMARY"
  cat "$DETAILS" >> "$SUMMARY"
  cp "$SUMMARY" "$OUT/gpu_session_$DEVICE.md"
  tar -czf "$OUT/gpu_session_$DEVICE.tar.gz.part" -C /tmp/gpu_session "$DEVICE" && \
    mv "$OUT/gpu_session_$DEVICE.tar.gz.part" "$OUT/gpu_session_$DEVICE.tar.gz"
}
part() {  # part NAME CAP COMMAND...: run under `timeout`, log to WORK/NAME.log, record the outcome
  local name=$1 budget; budget=$(cap "$2"); shift 2
  if (( budget < 10 )); then
    echo "| $name | skipped: $(left) s left | | |" >> "$PARTS"; pack; return
  fi
  echo "== $name (cap $budget s, $(left) s left)"
  local t0=$SECONDS
  timeout -k 10 "$budget" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  tail -25 "$WORK/$name.log"
  local what=ok; (( rc == 124 || rc == 137 )) && what="timed out"; (( rc != 0 && rc != 124 && rc != 137 )) && what="exit $rc"
  echo "| $name | $what | $((SECONDS - t0)) | $budget |" >> "$PARTS"
  pack
}

{
  echo "# GPU session on $DEVICE ($(date -u +%FT%TZ), mode $MODE)"; echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | sed 's/^/    /'
  echo "    $("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1)"
  # the device gets the working tree without .git: name the commit in the call (GENFORGE_COMMIT=...)
  echo "    commit ${GENFORGE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"; echo
} > "$HEAD"
printf '| part | outcome | seconds | cap |\n|---|---|---|---|\n' > "$PARTS"
: > "$DETAILS"
details() { { echo; cat "$@"; } >> "$DETAILS" 2>/dev/null; }

# -- c: the Shakespeare preset and variants against nanoGPT's own train.py --------------------
if [[ $MODE == --smoke ]]; then
  part c_shakespeare 270 "$PY" benchmarks/bench_gpu_shakespeare.py --smoke --variant preset= --no-repeat \
    --budget-s 240 --out "$WORK/shakespeare"
else
  b=$(cap 300)
  part c_shakespeare 300 "$PY" benchmarks/bench_gpu_shakespeare.py --budget-s $((b - 15)) --out "$WORK/shakespeare"
fi
details "$WORK"/shakespeare/*.md; pack

# -- b: generation speed (KV cache, recompute, static decode step) ----------------------------
if [[ $MODE == --smoke ]]; then
  part b_generation 60 "$PY" benchmarks/bench_generation.py --new-tokens 8 --repeats 1 --out "$WORK/generation"
else
  # One worker per row, each under its own timeout, appending a JSON line as it finishes (the whole
  # bench writes only at its end and its 13 workers may not fit the cap): static graph rows first.
  gen_rows() {
    mkdir -p "$WORK/generation"
    for run in "static 1" "kv 1" "static 16" "kv 16" "window-static 16" "window 16" "recompute 1" \
      "static-inductor 1"; do
      timeout 40 "$PY" benchmarks/bench_generation.py worker $run 500 3 >> "$WORK/generation/rows.jsonl" \
        || echo "{\"worker\": \"$run\", \"failed\": true}" >> "$WORK/generation/rows.jsonl"
    done
  }
  export -f gen_rows; export WORK PY  # `timeout` runs programs, not functions
  part b_generation 150 bash -c gen_rows
  { echo; echo "b: generation workers (6x384, 500 tokens, 3 repeats; tokens/s per row):"
    sed 's/^/    /' "$WORK/generation/rows.jsonl"; } >> "$DETAILS" 2>/dev/null
fi
details "$WORK"/generation/*.md; pack

# -- a: the test suite on the device: first the tests of the GPU paths, then all of it ----------
# pyproject's addopts has -q (-qq would hide the counts). The image lacks fastapi, music21, RDKit and
# more: some 20 test modules fail to import there, so collection errors must not stop the rest.
opts=(-rs -p no:cacheprovider --continue-on-collection-errors)
"$PY" -c "import pytest_timeout" 2>/dev/null && opts+=(--timeout 120)  # one hung test cannot eat the cap
first=()
for f in tests/test_static_decode.py tests/test_decode_step.py tests/test_early_stop.py; do
  [[ -f $f ]] && first+=("$f")
done
dev=cuda
[[ $MODE == --smoke ]] && dev=cpu first=(tests/test_early_stop.py -k bad_values)  # the command line only
part a1_gpu_paths 40 env GENFORGE_TEST_DEVICE=$dev "$PY" -m pytest "${opts[@]}" "${first[@]}"
counts() { [[ -f $WORK/$1.log ]] && { echo; echo "$1: $(grep -E 'passed|failed|error' "$WORK/$1.log" | tail -1)"; } >> "$DETAILS"; }
counts a1_gpu_paths
"$PY" -c "import xdist" 2>/dev/null && opts+=(-n 8 --dist loadfile)  # isolated tests: tmp dirs, free ports
if [[ $MODE == --smoke ]]; then
  part a2_suite 70 env GENFORGE_TEST_DEVICE=cpu "$PY" -m pytest "${opts[@]}" tests/test_config.py
else
  part a2_suite 70 env GENFORGE_TEST_DEVICE=cuda "$PY" -m pytest "${opts[@]}" tests
fi
counts a2_suite; pack

# -- d: gpt-jsb-gpu while time is left (SIGTERM: the trainer checkpoints and exits) ------------
if [[ -f src/genforge/configs/gpt-jsb-gpu.toml ]]; then
  smoke=()
  [[ $MODE == --smoke ]] && smoke=(model.n_layer=1 model.n_embd=32 model.n_head=2 model.block_size=64 train.batch_size=4
    train.max_steps=6 train.eval_every=3 train.eval_batches=1 train.compile=false train.device=cpu train.plot=false)
  jsb_cap=$(( $(left) - 40 ))  # keep ~30 s for its evaluation
  part d_jsb_train "$jsb_cap" "$PY" -m genforge train gpt-jsb-gpu "${smoke[@]}" --run-dir "$RUNS/jsb" --no-progress
  [[ -d $RUNS/jsb/checkpoints ]] && part d_jsb_eval 35 "$PY" -m genforge eval "$RUNS/jsb" \
    --device "$([[ $MODE == --smoke ]] && echo cpu || echo auto)"
  cp "$RUNS/jsb/eval.json" "$WORK/jsb_eval.json" 2>/dev/null
  cp "$RUNS/jsb/metrics.jsonl" "$WORK/jsb_metrics.jsonl" 2>/dev/null
  [[ -f $WORK/jsb_eval.json ]] && { echo; echo "d: gpt-jsb-gpu eval.json:"; sed 's/^/    /' "$WORK/jsb_eval.json"; } >> "$DETAILS"
else
  echo "| d_jsb | skipped: no gpt-jsb-gpu preset | | |" >> "$PARTS"
fi
pack
cat "$SUMMARY"
