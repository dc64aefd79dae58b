#!/usr/bin/env bash
# The GPU plan: two calls on one GPU machine that lacks datasets (and dill, multiprocess) and
# gguf and cannot download. Everything it needs travels in .whl/ (wheels for its Python 3.12) and
# .gpu/ (SmolLM2's 98 MB GGUF in two halves, one a call, and the GLUE rows the grid reads).
#
#   bash bench/gpu_grid.sh pack            # here: .whl/, .gpu/part-aa, .gpu/part-ab, .gpu/glue
#   carry .whl .gpu/part-aa .gpu/glue:     bash bench/gpu_grid.sh speed $OUT
#   carry .gpu/part-ab .gpu/grid:          bash bench/gpu_grid.sh grid MINUTES $OUT
#
# speed (the first call, useful on a cold machine): installs and checks the wheels, keeps them,
#   the first half and the rows in /tmp/gpu for the second call, runs bench/gpu_checks.py (every
#   script on a bf16 checkpoint in fp32, fp16, bf16 and with gradient checkpointing; one JSON per
#   check in $OUT/checks/) and bench/gpu.py at 32 x 128 and 8 x 256, one JSON per shape in
#   $OUT/speed/ written after every method, the log in $OUT/log-speed.txt.
# grid (the second call, while the machine is still warm: it stays about 30 s after a call): the
#   SmolLM2 grid on SST-2, RTE and MRPC, one pool of 8 runs at a time across tasks and seeds,
#   resumed from the JSON files carried in .gpu/grid/, no run started after MINUTES from the
#   call's start (its set-up counted), the results in $OUT/grid/, the log in $OUT/log-grid.txt.
#   On a machine that went cold it stops at once and says so: run speed again.
# SMOKE=1 runs both on the CPU with a tiny budget (2 layers, 32 rows, two methods): what the
# tests do in an environment like the GPU image's (bench/gpu_image.py; PYVER=3.11 packs its wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
GLUE=${GLUE_DIR:-../shared/glue}
STAGE=${STAGE:-/tmp/gpu}
start=$SECONDS

install() {  # the carried wheels into $STAGE/site, then a check that they import
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$STAGE/site" "$STAGE"/*.whl
    PYTHONPATH="$STAGE/site" python3 -c "import datasets, dill, multiprocess, gguf; print('wheels: ok')"
}

case "${1:-}" in
pack)
    rm -rf .whl .gpu && mkdir -p .whl .gpu/glue .gpu/grid
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 gguf==0.19.0
    gguf=$(python3 -c "from bench import smollm2; print(smollm2.gguf_path())")
    split -n 2 "$gguf" .gpu/part-  # .gpu/part-aa and .gpu/part-ab, 49 MB each
    for task in SST-2 RTE MRPC; do
        mkdir -p ".gpu/glue/$task"
        cp "$GLUE/$task/dev.tsv" ".gpu/glue/$task/"
        head -n 4001 "$GLUE/$task/train.tsv" > ".gpu/glue/$task/train.tsv"  # the grid reads at most 4,000 rows
    done
    cp bench/results/gpu-grid/*.json .gpu/grid/ 2>/dev/null || true  # what already ran there
    du -sh .whl .gpu/part-aa .gpu/part-ab .gpu/glue
    ;;
speed)
    out=${2:?the output folder}
    mkdir -p "$out/speed" "$STAGE"
    {
        cp .whl/*.whl .gpu/part-aa "$STAGE/" && cp -r .gpu/glue "$STAGE/"
        install
        if [ -n "${SMOKE:-}" ]; then
            PYTHONPATH="$STAGE/site" python3 bench/gpu_checks.py --out_dir "$out/checks" --steps 2 --scripts lora,prefix \
                --runs fp32,fp16,checkpointing
            python3 bench/gpu.py --device cpu --layers 2 --shapes 2x16,2x32 --steps 1 --warmup 0 \
                --rounds 1 --methods full,lora,prompt --out_dir "$out/speed"
        else
            nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$out/card.txt"
            PYTHONPATH="$STAGE/site" python3 bench/gpu_checks.py --out_dir "$out/checks"  # ~1 minute, first
            python3 bench/gpu.py --shapes 32x128,8x256 --out_dir "$out/speed"
        fi
    } 2>&1 | tee "$out/log-speed.txt"
    ;;
grid)
    minutes=${2:?minutes}
    out=${3:?the output folder}
    mkdir -p "$out/grid"
    {
        if [ ! -f "$STAGE/part-aa" ] || [ ! -d "$STAGE/site" ]; then
            echo "error: $STAGE holds no first half or wheels: the machine is not the warm one of the speed call; run speed again, then grid at once"
            exit 3
        fi
        export PYTHONPATH="$STAGE/site" HF_HUB_OFFLINE=1 SMOLLM2_DIR="$STAGE/smollm2"
        cp .gpu/grid/*.json "$out/grid/" 2>/dev/null || true  # resume what ran before
        cat "$STAGE/part-aa" .gpu/part-ab > "$STAGE/SmolLM2-135M-Instruct.Q4_1.gguf"
        python3 bench/smollm2.py --gguf "$STAGE/SmolLM2-135M-Instruct.Q4_1.gguf"
        left=$(python3 -c "print(max(0.5, $minutes - ($SECONDS - $start) / 60))")  # from the call's start
        flags=(--jobs 8 --threads 2)
        [ -n "${SMOKE:-}" ] && flags=(--jobs 2 --threads 1 --methods lora prompt --seeds 0 --smoke)
        python3 bench/accuracy_smollm2.py --part grid --task sst2 rte mrpc "${flags[@]}" \
            --minutes "$left" --data_dir "$STAGE/glue" --out_dir "$out/grid"
    } 2>&1 | tee "$out/log-grid.txt"
    exit "${PIPESTATUS[0]}"
    ;;
*)
    echo "usage: bash bench/gpu_grid.sh pack | speed OUT | grid MINUTES OUT" >&2
    exit 2
    ;;
esac
