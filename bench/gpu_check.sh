#!/usr/bin/env bash
# The GPU check in one command (bench/gpu_check.py says what it runs): e.g.
#   bash bench/gpu_check.sh                                          # CUDA, Qwen3-0.6B's shape, 8-minute budget
#   bash bench/gpu_check.sh --device cpu --shape tiny --budget 120   # on a CPU, a toy shape
# Python packages the machine lacks are installed from .whl/ (bash bench/fetch_device_wheels.sh fills it where PyPI
# is reachable) into a private folder; slamkit itself runs from this checkout (no pip install needed).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
missing=$("$python" -c 'import importlib.util as u; print(" ".join(m for m in ("hydra", "omegaconf", "antlr4", "datasets") if u.find_spec(m) is None))')
if [ -n "$missing" ]; then
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "error: missing Python packages ($missing) and no wheels in .whl/: run bash bench/fetch_device_wheels.sh where PyPI is reachable" >&2
    exit 2
  fi
  site="${TMPDIR:-/tmp}/slamkit_gpu_check_site"
  echo "gpu_check: installing $missing from .whl/ into $site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" bench/gpu_check.py "$@"
