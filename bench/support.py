"""The README's method x config table: every train_*.py (and variant) under every shipped accelerate
config, on CPU with 2 processes over gloo (ZeRO-3 really partitions the weights), a tiny random
GPT-2 and the SST-2 fixture (tests/data/glue), offline. A cell is O when the run exits 0, every
rank trained (the step count), the loss is finite and the trainable weights were saved; X
otherwise, with the error kept in the JSON.

    python bench/support.py                     # 72 cells, ~30 min on 2 cores -> bench/results/support.json
    python bench/support.py --cells lora/zero3 prompt/fp16
    python bench/report.py                      # -> the README table

tests/test_support.py runs every cell as well (marked slow; CI runs it) and fails when an outcome
differs from bench/results/support.json, or when the README's table differs from the file.
"""

import argparse
import json
import math
import os
import re
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench.launch import WORLD, launch  # noqa: E402

RESULTS = os.path.join(ROOT, "bench", "results", "support.json")
ROWS = {  # row: (script, label, method flags); "{model}" is the tiny model's folder
    "full": ("train_full.py", "", []),
    "lora": ("train_lora.py", "", []),
    "dora": ("train_lora.py", "DoRA", ["--use_dora"]),
    "prefix": ("train_prefix.py", "", ["--num_prefix", "4", "--prefix_hidden", "16"]),
    "houlsby": ("train_adapter.py", "Houlsby", ["--variant", "houlsby"]),
    "pfeiffer": ("train_adapter.py", "Pfeiffer", ["--variant", "pfeiffer"]),
    "prompt": ("train_prompt.py", "", ["--num_virtual_tokens", "4"]),
    "idpg": (
        "train_idpg.py",
        "IDPG",
        ["--num_virtual_tokens", "4", "--generator_hidden", "16", "--encoder_name_or_path", "{model}"],
    ),
    "m-idpg": (
        "train_idpg.py",
        "M-IDPG",
        [
            "--num_virtual_tokens",
            "4",
            "--generator_hidden",
            "16",
            "--encoder_name_or_path",
            "self",
            "--prompt_layers",
            "all",
        ],
    ),
}
COLUMNS = {
    "single": "single",
    "ddp": "DDP",
    "bf16": "bf16",
    "fp16": "fp16",
    "zero1": "ZeRO-1",
    "zero2": "ZeRO-2",
    "zero3": "ZeRO-3",
    "zero3_bf16": "ZeRO-3 + bf16",
    "zero3_offload": "ZeRO-3 offload",
    "fsdp": "FSDP2",
    "fsdp_bf16": "FSDP2 + bf16",
}
GPU_ONLY = {"fp16"}  # on CPU accelerate runs the fp16 yaml in fp32: the launch path is tested, not fp16 numerics
TRAIN_ROWS, BATCH = 64, 8
MODEL = f"tiny random GPT-2 (bench/tiny.py), SST-2 fixture (tests/data/glue) {TRAIN_ROWS} rows, batch {BATCH}, 1 epoch"


def run_cell(row, config, model_dir, glue_dir, out_dir, extra=()):
    """One cell: {"ok": True, "steps": N} or {"ok": False, "error": "..."}. `extra`: more flags."""
    from safetensors.torch import load_file

    script, _, flags = ROWS[row]
    proc = launch(
        script,
        config,
        [
            "--task",
            "sst2",
            "--model_name_or_path",
            model_dir,
            "--data_dir",
            glue_dir,
            "--output_dir",
            out_dir,
            "--max_train_samples",
            str(TRAIN_ROWS),
            "--max_eval_samples",
            "32",
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            str(BATCH),
            *[f.replace("{model}", model_dir) for f in flags],
            *extra,
        ],
    )
    if proc.returncode != 0:
        return {"ok": False, "error": why_failed(proc)}
    res = json.load(open(os.path.join(out_dir, "results.json")))
    steps = res["log_history"][-1]["step"]
    expected = math.ceil(TRAIN_ROWS / BATCH / WORLD[config])
    saved = load_file(os.path.join(out_dir, "trainable.safetensors"))
    problems = [f"{steps} steps, expected {expected} ({WORLD[config]} processes)"] if steps != expected else []
    problems += (
        ["train loss not finite"]
        if not all(math.isfinite(h.get("train_loss", h.get("loss"))) for h in res["log_history"])
        else []
    )
    problems += (
        ["no finite trainable weights saved"]
        if not saved or not all(t.float().isfinite().all() for t in saved.values())
        else []
    )
    return {"ok": False, "error": "; ".join(problems)} if problems else {"ok": True, "steps": steps}


def why_failed(proc):
    """One line: the script's own error (an exception or common.errors.fail), else how the launcher saw the
    process die (a signal, e.g. SIGABRT after "terminate called ...")."""
    lines = [x.strip() for x in proc.stderr.splitlines() if x.strip()]
    raised = [x for x in lines if re.match(r"(error: |[\w.]+(Error|Exception): )", x) and "ChildFailedError" not in x]
    died = [x for x in lines if x.startswith("terminate called")]
    root = (
        lines.index("Root Cause (first observed failure):") if "Root Cause (first observed failure):" in lines else 0
    )
    code = [" ".join(x.split()) for x in lines[root:] if x.startswith("exitcode")]
    because = raised[-1:] + died[-1:] + code[:1] or [f"exit {proc.returncode}: {lines[-1] if lines else ''}"]
    return "; ".join(because)[:300]


def table(cells):
    """The README's markdown table from {"row/config": outcome}."""
    lines = ["| script | " + " | ".join(COLUMNS.values()) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for row, (script, label, _) in ROWS.items():
        marks = []
        for config in COLUMNS:
            cell = cells.get(f"{row}/{config}")
            marks.append("?" if cell is None else ("X" if not cell["ok"] else "O*" if config in GPU_ONLY else "O"))
        lines.append(f"| `{script}`{f' ({label})' if label else ''} | " + " | ".join(marks) + " |")
    failed = [f"- {key}: {cell['error']}" for key, cell in cells.items() if not cell["ok"]]
    return "\n".join(lines + ([""] + ["Failing cells:"] + failed if failed else []))


def main():
    from bench.tiny import FIXTURES, make_tiny_gpt2
    from common.outputs import atomic_write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--cells",
        nargs="+",
        default=[f"{r}/{c}" for r in ROWS for c in COLUMNS],
        help="row/config pairs (default: all)",
    )
    args = p.parse_args()
    unknown = [c for c in args.cells if c.partition("/")[0] not in ROWS or c.partition("/")[2] not in COLUMNS]
    if unknown:
        sys.exit(f"error: unknown cells {unknown}; rows: {', '.join(ROWS)}; configs: {', '.join(COLUMNS)}")
    cells = json.load(open(RESULTS))["cells"] if os.path.exists(RESULTS) else {}
    order = {f"{r}/{c}": i for i, (r, c) in enumerate((r, c) for r in ROWS for c in COLUMNS)}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_gpt2(os.path.join(tmp, "tiny-gpt2"))
        for key in args.cells:
            row, _, config = key.partition("/")
            cells[key] = run_cell(row, config, model_dir, FIXTURES, os.path.join(tmp, key))
            print(f"{key:24s} {'O' if cells[key]['ok'] else 'X ' + cells[key]['error']}", flush=True)
            cells = dict(sorted(cells.items(), key=lambda kv: order.get(kv[0], len(order))))
            atomic_write_json(RESULTS, {"model": MODEL, "processes": WORLD, "cells": cells})
    print(table(cells))


if __name__ == "__main__":
    main()
