#!/usr/bin/env bash
# The offline demo: steps 1-4 on the bundled ARC-Easy sample with a tiny Qwen3 (no network; its time: README.md "Fresh machine: two commands").
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec python "$(dirname "$0")/demo.py" "$@"
