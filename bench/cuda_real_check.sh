#!/usr/bin/env bash
# cuda_real_check.sh: the real models on a lent GPU against the CPU (issue 19), the last of the
# calls bench/cuda_real_prepare.sh plans: joins .models/<name>/p*/part* into .models/<name>.gguf
# (checking the sha256 from meta/), reuses the build bench/cuda_check.sh left in build/cuda-check
# (else builds), then runs tests/test_cuda_real.py (greedy tokens equal to the CPU's for 32 tokens
# of the oracle prompts; same top-1 at every perplexity position and mean KL <= 1e-3; every layer
# and half of them on the device) and bench/bench_cuda.py --models on the file. Writes logs and
# bench_cuda_real.json into $1 (default $OUT, else ./cuda_check_out). Needs no network.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-./cuda_check_out}}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/cuda_real_check.log"
PY="$(command -v python3)"
export PYTHONUNBUFFERED=1
T0=$(date +%s)
stamp() { echo "[cuda_real_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

MODELS=()
for meta in .models/*/meta; do
  [ -d "$meta" ] || continue
  dir="$(dirname "$meta")"; name="$(basename "$dir")"
  want="$(cat "$meta/parts")"
  have="$(ls "$dir"/p*/part* 2>/dev/null | wc -l)"
  if [ "$have" != "$want" ]; then
    stamp "$name: $have of $want parts here (the machine was given back between calls?): skipped"
    continue
  fi
  for ((k = 0; k < want; k++)); do cat "$dir/p$k/part$k"; done > ".models/$name.gguf"
  if (cd .models && sha256sum -c --quiet "$name/meta/sha256"); then
    stamp "$name: joined $want parts, sha256 ok"
    MODELS+=(".models/$name.gguf")
    cp "$meta"/*.json .models/ 2>/dev/null || true
  else
    stamp "$name: sha256 mismatch: skipped"; rm -f ".models/$name.gguf"
  fi
done
[ ${#MODELS[@]} -gt 0 ] || { stamp "FAILED: no real model assembled"; exit 1; }

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/python:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c "import lowbit._core" 2>/dev/null; then
  BUILD=build/cuda-check
  command -v nvcc >/dev/null 2>&1 || export PATH="/usr/local/cuda/bin:$PATH"
  stamp "no module from bench/cuda_check.sh: building (sm_90)"
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLOWBIT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" >>"$LOG" 2>&1 \
    && cmake --build "$BUILD" -j"$(nproc)" >>"$LOG" 2>&1 || { stamp "FAILED: build"; tail -40 "$LOG"; exit 1; }
fi
$PY -c "import lowbit; print(lowbit.cuda_status())" 2>&1 | tee -a "$LOG"

stamp "pytest tests/test_cuda_real.py"
LOWBIT_TEST_MODELS="$PWD/.models" LOWBIT_TEST_NO_PULL=1 LOWBIT_ORACLES="$PWD/.models" \
  $PY -m pytest -q -s -p no:cacheprovider -rs tests/test_cuda_real.py 2>&1 | tee "$OUTDIR/pytest_real.log" | tail -60
TEST_RC=${PIPESTATUS[0]}

stamp "bench_cuda.py --models ${MODELS[*]}"
$PY bench/bench_cuda.py --shapes "" --models "${MODELS[@]}" --json "$OUTDIR/bench_cuda_real.json" 2>&1 \
  | tee -a "$LOG" | tail -20
BENCH_RC=${PIPESTATUS[0]}
stamp "done: tests rc $TEST_RC, bench rc $BENCH_RC"
exit $(( TEST_RC != 0 || BENCH_RC != 0 ))
