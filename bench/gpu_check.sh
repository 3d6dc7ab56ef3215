#!/usr/bin/env bash
# bench/gpu_check.py on a device machine: install the wheels carried in .whl/ (diffusers, open_clip, nbdev and what they
# need that the machine lacks) into /tmp/site, then run the script with this script's arguments, its output also going
# to $OUT/gpu_check.log so that it comes back. See bench/README.md ("gpu_check").
set -o pipefail
cd "$(dirname "$0")/.." || exit 1
if compgen -G '.whl/*.whl' >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD
export MPLBACKEND=Agg TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
log=/dev/null
if [ -n "${OUT:-}" ]; then log="$OUT/gpu_check.log"; fi
python3 bench/gpu_check.py "$@" 2>&1 | tee "$log"
