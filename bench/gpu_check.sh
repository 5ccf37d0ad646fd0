#!/usr/bin/env bash
# The GPU check (issue 13; docs/GPU_CHECK.md). From the repository root:
#   bash bench/gpu_check.sh [--budget-s 400] [--stages a,b] [--skip c] [--cpu]
# Results go to $OUT (default bench/results/gpu_check): results.json, summary.json, log.txt.
# Packages the device lacks travel as wheels in .whl/ (installed into /tmp/site first).
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1 WANDB_MODE=disabled PIP_ROOT_USER_ACTION=ignore
export OUT="${OUT:-bench/results/gpu_check}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}" || { echo "wheel install failed" | tee -a "$OUT/log.txt"; exit 1; }
fi
python3 -m bench.gpu_check --out "$OUT" "$@"
