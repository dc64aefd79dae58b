#!/usr/bin/env bash
# One GPU run: every method at GPT2-XL shape, random weights, fp32 weights under bf16 autocast (the
# scripts' bf16 config), fused AdamW, batch 32 x 128, 8 x 128 and 8 x 256. Writes
# bench/results/gpu-<card>.json; `python bench/report.py` puts it in the README. Needs torch and
# transformers (peft for its rows). Add `--profile lora` for one method's top kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 bench/gpu.py "$@"
