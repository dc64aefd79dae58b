"""What a GPU must confirm that CPU processes cannot: each script, run as users run it, on a tiny Llama saved in bf16
(as hub decoders ship), in fp32, under fp16 with loss scaling (the original trained in fp16) and under bf16, and with
--gradient_checkpointing. One JSON per check in OUT_DIR, written as each finishes:

    python bench/gpu_checks.py --out_dir OUT            # on the GPU machine (bench/gpu_grid.sh speed runs it)
    python bench/gpu_checks.py --out_dir OUT --steps 2  # anywhere: on a machine without a GPU it runs on the CPU

Each record: the exit status, the logged losses and gradient norms, the dtypes of the trained weights as saved, and
results.json's precision. Read them for: trainable weights in fp32 whatever the checkpoint (and under fp16 and bf16),
finite losses under fp16's loss scaling, the grad_norm of fp16 and bf16 runs near fp32's, and checkpointing's losses
equal to the plain run's.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ["full", "lora", "prompt", "prefix", "adapter", "idpg"]
RUNS = {  # name: (environment, extra flags)
    "fp32": ({}, []),
    "fp16": ({"ACCELERATE_MIXED_PRECISION": "fp16"}, []),
    "bf16": ({"ACCELERATE_MIXED_PRECISION": "bf16"}, []),
    "checkpointing": ({}, ["--gradient_checkpointing"]),
}


def check(script, run, model_dir, out_dir, steps):
    """One script, one way of running it: its record."""
    env, extra = RUNS[run]
    if script == "idpg":
        extra = extra + ["--encoder_name_or_path", "self"]
    if script == "prefix" and run == "checkpointing":
        return {"skipped": "prefix tuning refuses --gradient_checkpointing"}
    folder = os.path.join(out_dir, f"run-{script}-{run}")
    cmd = [sys.executable, f"train_{script}.py", "--task", "sst2", "--model_name_or_path", model_dir]
    cmd += ["--data_dir", "tests/data/glue", "--output_dir", folder, "--overwrite_output_dir"]
    cmd += ["--max_train_steps", str(steps), "--logging_steps", "1", "--max_train_samples", "64", *extra]
    cmd += ["--max_grad_norm", "1"]  # every run logs its norm (prompt tuning and Houlsby clip by default not at all)
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1", **env}, capture_output=True, text=True
    )
    record = {"exit": proc.returncode, "seconds": round(time.perf_counter() - start, 1)}
    if proc.returncode:
        record["stderr"] = proc.stderr[-1500:]
        return record
    from safetensors.torch import load_file

    results = json.load(open(os.path.join(folder, "results.json")))
    logged = [h for h in results["log_history"] if "loss" in h]
    saved = load_file(os.path.join(folder, "trainable.safetensors"))
    return {
        **record,
        "losses": [h["loss"] for h in logged],
        "grad_norms": [h.get("grad_norm") for h in logged],
        "saved_dtypes": sorted({str(t.dtype).removeprefix("torch.") for t in saved.values()}),
        "precision": results["precision"],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out_dir", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--scripts", default=",".join(SCRIPTS))
    p.add_argument("--runs", default=",".join(RUNS))
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    import torch

    from bench.tiny import make_tiny_llama

    os.makedirs(args.out_dir, exist_ok=True)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_llama(os.path.join(tmp, "llama-bf16"))
        for script in args.scripts.split(","):
            for run in args.runs.split(","):
                record = {
                    "script": script,
                    "run": run,
                    "device": device,
                    **check(script, run, model_dir, tmp, args.steps),
                }
                path = os.path.join(args.out_dir, f"check-{script}-{run}.json")
                with open(path + ".tmp", "w") as f:
                    json.dump(record, f, indent=1)
                os.replace(path + ".tmp", path)
                print(
                    f"{script:8} {run:14} exit {record.get('exit', '-')} {record.get('saved_dtypes', '')}", flush=True
                )


if __name__ == "__main__":
    main()
