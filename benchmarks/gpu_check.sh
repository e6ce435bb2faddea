#!/usr/bin/env bash
# The GPU proof in one command (issue 14); see benchmarks/README.md, "GPU check".
#
#   make gpu-stage                          # here, with internet: wheels + Fashion-MNIST -> .gpu_stage/
#   bash benchmarks/gpu_check.sh run        # on the GPU machine (carry .gpu_stage): results -> $OUT
#   bash benchmarks/gpu_check.sh run --dry-run    # on the CPU (JAX_PLATFORMS=cpu), few steps
#
# Steps, each under its own time limit, each logged to $OUT/logs/<step>.log; a failed step
# is recorded and the next one still runs (the device step excepted: without the expected
# backend nothing after it would mean anything). $OUT/summary.md collects the numbers.
# Exit status: 0 if every step passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

usage() { echo "usage: $0 {stage|run [--dry-run]}" >&2; exit 2; }
[ $# -ge 1 ] || usage
PY=${PY:-python3}
STAGE=${GPU_STAGE:-$REPO/.gpu_stage}

case $1 in
  stage) exec "$PY" -m benchmarks.gpu_check stage --dest "$STAGE" ;;
  run) shift ;;
  *) usage ;;
esac
DRY=0
for a in "$@"; do
  case $a in
    --dry-run) DRY=1 ;;
    *) echo "gpu_check.sh: unknown argument $a; expected --dry-run" >&2; exit 2 ;;
  esac
done

OUT=${OUT:-$REPO/runs/gpu_check}
mkdir -p "$OUT/logs" || { echo "gpu_check.sh: cannot create OUT=$OUT" >&2; exit 2; }
: > "$OUT/steps.tsv"
SITE=${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/gpu_check_site}
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
DATA=()
[ -d "$STAGE/data" ] && DATA=(--data-dir "$STAGE/data")

if [ $DRY = 1 ]; then
  export JAX_PLATFORMS=cpu
  EXPECT=cpu
  FORCE=(--force)       # exercise the offline install even where everything is importable
  [ -d "$STAGE/wheels" ] || FORCE=()
  TESTS=${GPU_CHECK_TESTS:-tests/toolkit/training/test_dpsgd.py}
  TRAIN=(--epochs 1 --limit-train 512 --batch-size 128)
  BENCH=(--sizes mnist:32 --repeats 1 --memory-logical 32 --memory-micro 16)
  CHECKS=(--quick)
  LIMITS=(60 60 300 300 300 300)
else
  EXPECT=gpu
  FORCE=()
  TESTS=${GPU_CHECK_TESTS:-tests/toolkit/grads/test_bookkeeping.py tests/toolkit/training/test_dpsgd.py}
  TRAIN=(--epochs 3)
  BENCH=(--sizes mnist:256 mnist:4096 cifar10:256 cifar10:2048 --repeats 10
         --memory-micro 256 1024 4096)
  CHECKS=()
  LIMITS=(30 30 100 110 60 150)   # 480 s in all: the whole check fits in 8 minutes
fi

FAILED=0
# step NAME LIMIT CMD...: run CMD under `timeout LIMIT`, log it, record "name rc seconds".
step() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout --kill-after=10 "$limit" "$@" > >(tee "$OUT/logs/$name.log") 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$OUT/steps.tsv"
  [ $rc = 0 ] || { FAILED=1; echo "== $name failed (exit $rc; 124: over its time limit)"; }
  return $rc
}
finish() {
  "$PY" -m benchmarks.gpu_check summary --out "$OUT" > "$OUT/logs/summary.log" 2>&1 \
    && cat "$OUT/summary.md" || { cat "$OUT/logs/summary.log"; FAILED=1; }
  exit $FAILED
}

step install "${LIMITS[0]}" "$PY" -m benchmarks.gpu_check install --stage "$STAGE" \
  --target "$SITE" "${FORCE[@]}"
step device "${LIMITS[1]}" "$PY" -m benchmarks.gpu_check device --json "$OUT/device.json" \
  --expect "$EXPECT" || finish
# shellcheck disable=SC2086  # TESTS is a list of paths
step tests "${LIMITS[2]}" "$PY" -m pytest -q -x -p no:cacheprovider $TESTS
rm -rf "$OUT/train"
step train "${LIMITS[3]}" "$PY" -m toolkit train --preset fashion-mnist-tanh "${TRAIN[@]}" \
  "${DATA[@]}" --out "$OUT/train"
step checks "${LIMITS[4]}" "$PY" -m benchmarks.gpu_check checks --json "$OUT/checks.json" \
  "${CHECKS[@]}"
step bench "${LIMITS[5]}" "$PY" -m benchmarks.step_time --no-torch --allocator "glibc default" \
  "${BENCH[@]}" --out "$OUT/bench"
finish
