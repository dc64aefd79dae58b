#!/usr/bin/env bash
# The SmolLM2 accuracy grid (bench/accuracy_smollm2.py --part grid) on one GPU: SST-2, RTE and
# MRPC, every method at its script's defaults, seed 0 first, then seeds 1 and 2 of the main
# methods, 8 runs at a time, stopped after MINUTES (default 8). What ran is in OUT (default
# bench/results), one file per task, accuracy-smollm2-gpu-TASK.json; a stopped grid resumes.
#
# Budgets, one epoch at batch 16 as on the CPU: SST-2's first 4,000 rows (250 steps, 64 tokens),
# all of RTE (2,490 rows, 156 steps, 128 tokens) and MRPC (3,668 rows, 230 steps, 128 tokens).
# On 2 CPU cores a run takes 5-12 minutes (bench/results/accuracy-smollm2-grid.json); at the
# expected 50-100x on an H100/H200 a run is 10-20 s of steps plus about 20 s of start-up, so the
# 69 runs fit about 8 minutes at 8 at a time.
#
# The GPU machine lacks datasets (and its dill and multiprocess) and gguf, and cannot download;
# the model travels as its 98 MB GGUF, split in two halves that two calls carry. Here:
#     bash bench/gpu_grid.sh pack        # .whl/ (wheels for Python 3.12), .gpu/ (GGUF halves, GLUE rows)
# then on the GPU machine, in two calls while it stays warm:
#     carry .whl .gpu/part-aa .gpu/glue:  bash bench/gpu_grid.sh stage
#     carry .gpu/part-ab:                 bash bench/gpu_grid.sh run 8 $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE=${GLUE_DIR:-../shared/glue}

case "${1:-}" in
pack)
    mkdir -p .whl .gpu/glue
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0
    gguf=$(python3 -c "import sys; sys.path.insert(0, 'bench'); import smollm2; print(smollm2.gguf_path())")
    split -n 2 "$gguf" .gpu/part-  # .gpu/part-aa and .gpu/part-ab, 49 MB each
    for task in SST-2 RTE MRPC; do
        mkdir -p ".gpu/glue/$task"
        cp "$GLUE/$task/dev.tsv" ".gpu/glue/$task/"
        head -n 4001 "$GLUE/$task/train.tsv" > ".gpu/glue/$task/train.tsv"  # the grid reads at most 4,000 rows
    done
    du -sh .whl .gpu/part-aa .gpu/part-ab .gpu/glue
    ;;
stage)  # first call: the wheels and the first half stay on the warm machine
    mkdir -p /tmp/gpu && cp .gpu/part-aa /tmp/gpu/ && cp -r .gpu/glue /tmp/gpu/ && cp .whl/*.whl /tmp/gpu/
    ls -la /tmp/gpu
    ;;
run)
    minutes=${2:-8}
    out=${3:-bench/results}
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/gpu/*.whl
    export PYTHONPATH=/tmp/site HF_HUB_OFFLINE=1
    cat /tmp/gpu/part-aa .gpu/part-ab > /tmp/gpu/SmolLM2-135M-Instruct.Q4_1.gguf
    python3 bench/smollm2.py --gguf /tmp/gpu/SmolLM2-135M-Instruct.Q4_1.gguf
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/gpu-grid-card.txt" || true
    deadline=$((SECONDS + minutes * 60))
    for seeds in "0" "1 2"; do
        for task in sst2 rte mrpc; do
            left=$((deadline - SECONDS))
            [ "$left" -gt 10 ] || break 2
            # shellcheck disable=SC2086
            timeout "$left" python3 bench/accuracy_smollm2.py --part grid --task "$task" --seeds $seeds \
                --jobs 8 --threads 2 --data_dir /tmp/gpu/glue --out "$out/accuracy-smollm2-gpu-$task.json" || true
        done
    done
    ;;
*)
    echo "usage: bash bench/gpu_grid.sh pack | stage | run [MINUTES] [OUT]" >&2
    exit 2
    ;;
esac
