#!/usr/bin/env bash
# cuda_real_prepare.sh: gets a real model ready to travel to a lent GPU machine in pieces (issue 19).
#
# A device call takes at most 64 MiB of working tree (the repository is ~5 MiB of it), so a real
# GGUF larger than that goes in parts, one folder per call: .models/<name>/p0, p1, ... (ignored by
# git, each part <= PART_MIB, default 54). The machine keeps ignored paths between calls while it
# stays warm (it is given back after ~30 s idle), so call k carries only its own part and
# bench/cuda_real_check.sh, in the last call, joins them and checks the sha256 written here.
# SmolLM2-135M (98 MB) is two parts: the first rides along with bench/cuda_check.sh.
#
#   bash bench/cuda_real_prepare.sh [name] [PART_MIB]     (name: smollm2-135m-instruct by default)
# then, with the `run` tool, the calls one right after the other (the plan is printed at the end):
#   run(command="bash bench/cuda_check.sh", carry=[".whl", ".models/smollm2-135m-instruct/p0"], timeout_s=480)
#   run(command="bash bench/cuda_real_check.sh", carry=[".models/smollm2-135m-instruct/p1",
#       ".models/smollm2-135m-instruct/meta"], timeout_s=240)
set -euo pipefail
cd "$(dirname "$0")/.."
NAME="${1:-smollm2-135m-instruct}"
PART_MIB="${2:-54}"
SRC="${LOWBIT_TEST_MODELS:-$HOME/.cache/lowbit/models}/$NAME.gguf"
[ -f "$SRC" ] || { echo "cuda_real_prepare: no $SRC (lowbit pull $NAME first)" >&2; exit 2; }
DST=".models/$NAME"
rm -rf "$DST"
mkdir -p "$DST/meta"
split -b "${PART_MIB}M" -d -a 1 "$SRC" "$DST/part"
n=0
for f in "$DST"/part*; do
  mkdir -p "$DST/p$n"
  mv "$f" "$DST/p$n/part$n"
  n=$((n + 1))
done
(cd "$(dirname "$SRC")" && sha256sum "$NAME.gguf") > "$DST/meta/sha256"
echo "$n" > "$DST/meta/parts"
ORACLES="${LOWBIT_ORACLES:-$(cd .. && pwd)/shared/oracles}"
[ -d "$ORACLES" ] && cp "$ORACLES"/*.json "$DST/meta/" 2>/dev/null || true
echo "cuda_real_prepare: $SRC -> $n parts of <= $PART_MIB MiB in $DST (sha256 and oracles in $DST/meta)"
echo "calls, one right after the other while the machine is warm (the last one runs bench/cuda_real_check.sh):"
for ((k = 0; k < n; k++)); do
  if ((k == n - 1)); then
    echo "  run(command=\"bash bench/cuda_real_check.sh\", carry=[\"$DST/p$k\", \"$DST/meta\"], timeout_s=240)"
  elif ((k == 0)); then
    echo "  run(command=\"bash bench/cuda_check.sh\", carry=[\".whl\", \"$DST/p0\"], timeout_s=480)"
  else
    echo "  run(command=\"ls -la .models/*/*\", carry=[\"$DST/p$k\"], timeout_s=60)"
  fi
done
