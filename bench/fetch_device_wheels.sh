#!/usr/bin/env bash
# Download into .whl/ (at the repository root) the wheels a GPU machine without a package index lacks for slamkit:
# hydra-core, omegaconf and antlr4 (step 3), datasets with its pins (step 1 from the hub). Run it where PyPI is
# reachable; bench/gpu_check.sh installs them from .whl/ there when they are missing. Targets CPython 3.12 on
# x86-64 Linux (the NVIDIA image); PYTHON_VERSION=3.11 (etc.) for another.
set -euo pipefail
cd "$(dirname "$0")/.."
version=${PYTHON_VERSION:-3.12}
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for spec in "hydra-core==1.3.*" "omegaconf==2.3.*" "datasets>=3" "dill<0.4.2" "multiprocess<0.70.20"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" --implementation cp \
    "${platforms[@]}" -d .whl "$spec"
done
# antlr4-python3-runtime (omegaconf's parser) is published as a source archive only: build its pure-Python wheel.
python3 -m pip wheel -q --no-deps -w .whl "antlr4-python3-runtime==4.9.3"
ls -la .whl
