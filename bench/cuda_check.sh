#!/usr/bin/env bash
# cuda_check.sh: the prepared device check of the CUDA backend (issue 19), for a lent GPU machine.
#
# Builds lowbit with CUDA for sm_90 only (all cores), runs tests/test_cuda_host.py,
# tests/test_cuda.py and tests/test_cuda_model.py (the device model against the CPU engine on
# synthetic models of every dense architecture), then the self-test with bandwidth: every kernel of
# csrc/cuda/ against the CPU path on random data, and the decode mat-vec of every format timed over
# 1 GiB of weights against a device-to-device copy of the same run; then bench/bench_cuda.py (decode
# and prefill tok/s of llama 1B / 8B shapes, achieved bandwidth against the copy). Prints tables and
# writes cuda_check.json, bench_cuda*.json and the logs into the folder given as $1 (default: $OUT,
# else ./cuda_check_out). Needs no network. The module imports numpy and jinja2 only, both in the
# device image; the model tests and the benchmark write GGUF files with the gguf package, which the
# image lacks: bring its wheel in .whl/ (ignored by git), installed into /tmp/site first:
#   pip download gguf==0.19.0 --no-deps -d .whl      (here, before the run; pyyaml, tqdm, requests
#                                                     are in the image)
#
# With the `run` tool of a session that is lent a GPU (one call, ~5-6 minutes of device time):
#   run(command="bash bench/cuda_check.sh", carry=[".whl"], timeout_s=480)
#   (CUDA_CHECK_BENCH="--shapes 1b --types Q4_0" shortens the benchmark; CUDA_CHECK_BENCH=none
#    skips it; "CUDA_CHECK_SANITIZE=1 bash bench/cuda_check.sh" adds a compute-sanitizer memcheck
#    pass, on Firecracker machines only (KINDS.md), untimed here: allow timeout_s=600)
# Then read the table at the end of output_tail; the JSON and logs come back under files_at.
# Locally (any CUDA machine): bash bench/cuda_check.sh /tmp/cuda_out
# Before spending device time, dry-run the device tests' Python here: tests/tools/dry_cuda.py.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR="${1:-${OUT:-./cuda_check_out}}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/cuda_check.log"
PY="$(command -v python3)"
export PYTHONUNBUFFERED=1 LOWBIT_SELFTEST_VERBOSE=1   # the self-test prints each check as it goes
T0=$(date +%s)
stamp() { echo "[cuda_check +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }

{
  stamp "host: $(uname -m), $(nproc) cores, python $($PY -V 2>&1)"
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv 2>&1 || true
  nvcc --version 2>&1 | tail -1
} | tee -a "$LOG"

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# ---- build: sm_90 only, the dev layout (the module lands in python/lowbit) --------------------
if ! command -v nvcc >/dev/null 2>&1; then
  for d in /usr/local/cuda/bin /usr/local/cuda-13.0/bin /usr/local/cuda-12/bin; do
    [ -x "$d/nvcc" ] && export PATH="$d:$PATH" && break
  done
fi
BUILD="${LOWBIT_CHECK_BUILD:-build/cuda-check}"   # override to reuse a build folder
build() {   # $1: LOWBIT_CUBLAS value
  stamp "configure + build, LOWBIT_CUBLAS=$1, $(nproc) jobs"
  rm -f python/lowbit/_core*.so
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLOWBIT_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DLOWBIT_CUBLAS="$1" -DPython_EXECUTABLE="$PY" -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" >>"$LOG" 2>&1 \
    && cmake --build "$BUILD" -j"$(nproc)" >>"$LOG" 2>&1 \
    && PYTHONPATH="$PWD/python" $PY -c "import lowbit._core" >>"$LOG" 2>&1
}
# a cuBLAS-side failure (compile, link or import) must not cost the session: retry once without it
if ! build AUTO; then
  tail -40 "$LOG"
  build OFF || { stamp "FAILED: build (see $LOG)"; tail -60 "$LOG"; exit 1; }
fi
stamp "built: $(ls python/lowbit/_core*.so)"
grep -E "lowbit: (CUDA|cuBLAS)" "$LOG" | tail -2

export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
$PY -c "import lowbit; print(lowbit.cuda_status())" 2>&1 | tee -a "$LOG"

# ---- tests ------------------------------------------------------------------------------------
HAVE_GGUF=1
$PY -c "import gguf" 2>/dev/null || { HAVE_GGUF=0; stamp "WARNING: no gguf package: tests/test_cuda_model.py and bench_cuda.py cannot write models (pip download gguf==0.19.0 --no-deps -d .whl, carry .whl)"; }
stamp "pytest tests/test_cuda_host.py tests/test_cuda.py tests/test_cuda_model.py"
PYTHONPATH="$PWD/tests:$PYTHONPATH" $PY -m pytest -q -p no:cacheprovider -rs tests/test_cuda_host.py tests/test_cuda.py \
  tests/test_cuda_model.py 2>&1 | tee "$OUTDIR/pytest.log" | tail -40
TEST_RC=${PIPESTATUS[0]}
[ "$HAVE_GGUF" = 1 ] || TEST_RC=1

# ---- optional: memcheck of the self-test (no bandwidth), CUDA_CHECK_SANITIZE=1 -----------------
SAN_RC=0
if [ "${CUDA_CHECK_SANITIZE:-0}" = 1 ] && command -v compute-sanitizer >/dev/null 2>&1; then
  stamp "compute-sanitizer memcheck of the self-test"
  compute-sanitizer --tool memcheck --error-exitcode 3 $PY -c \
    "from lowbit import _core; d, r = _core.cuda_selftest(7, False); print('memcheck self-test:', len(r), 'checks')" \
    > "$OUTDIR/memcheck.log" 2>&1
  SAN_RC=$?
  tail -15 "$OUTDIR/memcheck.log"
fi

# ---- self-test with bandwidth: table + JSON ----------------------------------------------------
stamp "self-test with bandwidth"
$PY - "$OUTDIR" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, random, sys, time
from lowbit import _core
out = sys.argv[1]
seed = random.getrandbits(63)
t0 = time.time()
device, rep = _core.cuda_selftest(seed, True)
secs = time.time() - t0
copy = rep.get("copy", {}).get("gbs", 0.0)
print(f"device: {device}   seed {seed}   self-test {secs:.1f} s   d2d copy {copy:.0f} GB/s")
print(f"{'format':<9} {'mv err/emu':>11} {'mv err/cpu':>11} {'dequant':>8} {'mm err':>9} {'GB/s':>8} {'% copy':>7} {'% 4.8TB/s':>9}  ok")
fails = []
for name in _core.cuda_formats():
    missing = {"max_err": float("inf"), "tol": 0, "gbs": 0, "detail": "missing: see error/ entries"}
    mv, mc, dq, mm = (rep.get(f"{k}/{name}", missing) for k in ("matvec", "matvec_cpu", "dequant", "matmul"))
    ok = all(e["max_err"] <= e["tol"] for e in (mv, mc, dq, mm))
    if not ok:
        fails.append(name)
    pct = 100 * mv["gbs"] / copy if copy else 0
    print(f"{name:<9} {mv['max_err']:11.2e} {mc['max_err']:11.2e} {int(dq['max_err']):8d} {mm['max_err']:9.2e} "
          f"{mv['gbs']:8.0f} {pct:6.1f}% {100 * mv['gbs'] / 4800:8.1f}%  {'ok' if ok else 'FAIL'}")
for k, e in rep.items():
    if k == "copy" or k.split("/")[0] in ("matvec", "matvec_cpu", "dequant", "matmul"):
        continue
    ok = e["max_err"] <= e["tol"]
    if not ok:
        fails.append(k)
    print(f"{k:<17} err {e['max_err']:.2e} (tol {e['tol']:.0e})  {'ok' if ok else 'FAIL'}   {e['detail'][:300]}")
json.dump({"device": device, "seed": seed, "seconds": secs, "copy_gbs": copy, "results": rep, "failures": fails},
          open(os.path.join(out, "cuda_check.json"), "w"), indent=1)
print("FAILURES: " + ", ".join(fails) if fails else "all self-test checks within tolerance")
sys.exit(1 if fails else 0)
EOF
ST_RC=${PIPESTATUS[0]}

# ---- benchmark: llama 1B / 8B shapes (random valid blocks) -------------------------------------
BENCH_RC=0
BENCH_ARGS="${CUDA_CHECK_BENCH:-}"
if [ "$BENCH_ARGS" != none ] && [ "$HAVE_GGUF" = 1 ]; then
  if [ -z "$BENCH_ARGS" ]; then   # default: every type at 1B, the 4-bit ones at 8B
    set -- "--shapes 1b --types Q4_0,Q4_K_M,Q8_0" "--shapes 8b --types Q4_0,Q4_K_M"
  else
    set -- "$BENCH_ARGS"
  fi
  i=0
  for args in "$@"; do
    i=$((i + 1))
    stamp "bench_cuda.py $args"
    # shellcheck disable=SC2086
    $PY bench/bench_cuda.py $args --json "$OUTDIR/bench_cuda_$i.json" 2>&1 | tee -a "$LOG" "$OUTDIR/bench_cuda.log"
    [ "${PIPESTATUS[0]}" = 0 ] || BENCH_RC=1
  done
fi
stamp "done: pytest rc=$TEST_RC, self-test rc=$ST_RC, bench rc=$BENCH_RC, memcheck rc=$SAN_RC (H200 datasheet 4800 GB/s; copy is measured)"
exit $(( TEST_RC != 0 || ST_RC != 0 || SAN_RC != 0 || BENCH_RC != 0 ))
