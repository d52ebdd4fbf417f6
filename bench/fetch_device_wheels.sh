#!/usr/bin/env bash
# Download into .whl/ (at the repository root, git-ignored) the wheels that bash bench/gpu_check.sh installs on a GPU
# machine without a package index: hydra-core, omegaconf and antlr4-python3-runtime (step 3's Hydra). Run it where
# PyPI is reachable, then carry .whl/ to the GPU machine with the checkout. All three are pure Python (py3-none-any),
# so one set serves any CPython 3.x; PYTHON_VERSION (default 3.12, the NVIDIA image's) only tells pip which to pick.
#
# Not fetched: datasets (with its pins dill and multiprocess). slamkit imports it only to load ARC from the hub
# (example_arc/prepare_arc_data.py without --source), which a machine without a network cannot do anyway; the check
# runs step 1 on the bundled sample (--source). Everything else the check imports (torch, transformers, accelerate,
# PyYAML, packaging, matplotlib, tqdm, safetensors) is in the NVIDIA image; gpu_check.sh names any that is not.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
version=${PYTHON_VERSION:-3.12}
mkdir -p .whl
# One version of each (pip refuses two of one package in one install): drop those an earlier run left.
rm -f .whl/hydra_core-*.whl .whl/omegaconf-*.whl .whl/antlr4_python3_runtime-*.whl
"$python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$version" \
  --implementation cp -d .whl "hydra-core==1.3.*" "omegaconf==2.3.*"
# antlr4-python3-runtime (omegaconf's parser; omegaconf 2.3 needs 4.9.*) is published as a source archive only:
# build its pure-Python wheel here.
"$python" -m pip wheel -q --disable-pip-version-check --no-deps -w .whl "antlr4-python3-runtime==4.9.3"
ls -l .whl/hydra_core-*.whl .whl/omegaconf-*.whl .whl/antlr4_python3_runtime-*.whl
