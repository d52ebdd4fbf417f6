#!/usr/bin/env bash
# The GPU check in one command (bench/gpu_check.py says what it runs; bench/README.md the device call): e.g.
#   bash bench/gpu_check.sh --out "$OUT/gpu_check" --budget 300       # CUDA, Qwen3-0.6B's shape
#   bash bench/gpu_check.sh --device cpu --shape tiny --budget 300    # on a CPU, a toy shape
# Python packages the machine lacks are installed from .whl/ (bash bench/fetch_device_wheels.sh fills it where PyPI
# is reachable) into --out's scratch folder; slamkit itself runs from this checkout (no pip install needed). The
# working directory is left as it is, so that a relative --out is the caller's.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
if ! command -v "$python" >/dev/null 2>&1; then
  echo "error: PYTHON=$python: no such interpreter (set PYTHON to the Python that has torch, or leave it unset for python3)" >&2
  exit 2
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
  echo "error: PYTHON=$python: not a Python 3.11 or newer (slamkit needs one)" >&2
  exit 2
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" PYTHONDONTWRITEBYTECODE=1
exec "$python" "$repo/bench/gpu_check.py" "$@"
