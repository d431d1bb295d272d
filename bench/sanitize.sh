#!/usr/bin/env bash
# Build the C++ core with AddressSanitizer + UndefinedBehaviorSanitizer (separate build dir build/asan,
# the dev module in python/lowbit is left alone) and run the GGUF, kernel, engine and hostile-
# input tests against it. Any sanitizer report aborts the test process (halt_on_error), so a
# clean pytest summary means no report.
#
#   bench/sanitize.sh                 # default test set
#   bench/sanitize.sh tests/test_gguf.py -k header   # pytest arguments of your own
#
# Needs gcc's libasan/libubsan. Leak checking is off: CPython's own allocations are not leaks.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD=$ROOT/build/asan       # inside the ignored build/ folder, beside the dev build
STAGE=$BUILD/stage            # a copy of the package with the sanitized module in it

SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined"
cmake -S . -B "$BUILD" -G Ninja -DLOWBIT_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSKBUILD=ON \
      -DCMAKE_CXX_FLAGS="$SAN" -DCMAKE_SHARED_LINKER_FLAGS="$SAN" -DCMAKE_MODULE_LINKER_FLAGS="$SAN" \
      -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" >/dev/null
cmake --build "$BUILD" -j"${JOBS:-2}"

rm -rf "$STAGE" && mkdir -p "$STAGE"
cp -r python/lowbit "$STAGE/lowbit"
rm -f "$STAGE"/lowbit/_core*.so
cp "$BUILD"/_core*.so "$STAGE/lowbit/"
cp models/registry.json "$STAGE/lowbit/"

LIBASAN=$(gcc -print-file-name=libasan.so)
LIBSTDCXX=$(g++ -print-file-name=libstdc++.so)
if [ $# -eq 0 ]; then
  # test_env_override_and_bad_value starts a child with a clean environment (no LD_PRELOAD), which
  # the ASan runtime refuses to start in: not a finding, so it is left out here.
  set -- tests/test_gguf.py tests/test_kernels.py tests/test_engine.py tests/test_hostile.py tests/test_fuzz.py \
         tests/test_observer.py tests/test_info.py \
         --deselect tests/test_kernels.py::test_env_override_and_bad_value
fi
echo "sanitized module: $(ls "$STAGE"/lowbit/_core*.so)"
LD_PRELOAD="$LIBASAN:$LIBSTDCXX" \
ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1:allocator_may_return_null=1:${ASAN_OPTIONS:-}" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}" \
PYTHONPATH="$STAGE" python -m pytest -q -p no:cacheprovider "$@"
