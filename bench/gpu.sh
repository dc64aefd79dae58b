#!/usr/bin/env bash
# One short GPU run (under 8 minutes on an H100): every method at GPT2-XL shape, random weights,
# bf16, batch 8 x 256 tokens. Writes bench/results/gpu.json. Needs torch and transformers only.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 bench/gpu.py "$@"
