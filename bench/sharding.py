"""FSDP2 against DeepSpeed ZeRO-3 on the CPU: step time and peak memory per process, as ratios.

Each script runs under accelerate_configs/zero3.yaml and accelerate_configs/fsdp.yaml on 2 CPU
processes (gloo), a GPT-2-small-shaped model (12 layers, d = 768, random weights, the tests'
1,024-token vocabulary), batch 4 a process, the first rows of SST-2; the two configs interleave
round by round (A B B A ...), and each value is the median over the rounds. Step time: the run's
train_runtime_s (evaluation and saving left out) over its steps. Peak memory: the largest peak
RSS of the two processes, read by each rank as it exits (this file, run with --rank_of).

    python bench/sharding.py                   # writes bench/results/sharding.json
    python bench/sharding.py --rounds 1 --steps 4 --layers 2   # a quick look
"""

import argparse
import importlib
import json
import os
import resource
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RESULTS = os.path.join(ROOT, "bench", "results", "sharding.json")
SCRIPTS = {"full": "train_full.py", "lora": "train_lora.py", "prompt": "train_prompt.py"}
CONFIGS = ("zero3", "fsdp")
BATCH, WORLD = 4, 2


def as_rank(argv):
    """Under accelerate launch: the training script `argv[0]`'s main() with the rest as its
    command line, as the script runs it (run_main), then this process's peak RSS beside its
    outputs."""
    from common.errors import run_main

    script, args = argv[0], argv[1:]
    out = args[args.index("--output_dir") + 1]

    def main():
        module = importlib.import_module(script[:-3])
        module.main(module.parse_args(args))
        rank = os.environ.get("RANK", "0")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        with open(os.path.join(out, f"peak_rss_rank{rank}.json"), "w") as f:
            json.dump({"peak_rss_mib": peak}, f)

    run_main(main)


def measure(method, config, model_dir, data_dir, steps, out):
    """One run: (seconds per optimizer step, the larger peak RSS of the two processes in MiB)."""
    from bench.launch import launch

    args = [
        "--task", "sst2", "--model_name_or_path", model_dir, "--data_dir", data_dir,
        "--output_dir", out, "--max_train_samples", str(steps * BATCH * WORLD),
        "--max_eval_samples", "8", "--num_train_epochs", "1",
        "--per_device_train_batch_size", str(BATCH), "--max_length", "64",
        "--report_to", "none",
    ]  # fmt: skip
    proc = launch(os.path.relpath(__file__, ROOT), config, ["--rank_of", SCRIPTS[method], *args])
    if proc.returncode != 0:
        raise RuntimeError(f"{method} under {config}: {proc.stderr[-2000:]}")
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    peaks = [json.load(open(os.path.join(out, f"peak_rss_rank{r}.json")))["peak_rss_mib"] for r in range(WORLD)]
    return res["train_runtime_s"] / res["log_history"][-1]["step"], max(peaks)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=list(SCRIPTS), choices=list(SCRIPTS))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=16, help="optimizer steps of each run")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "glue"))
    p.add_argument("--out", default=RESULTS)
    args = p.parse_args()
    from bench.tiny import make_tiny_gpt2
    from common.outputs import atomic_write_json

    runs = {f"{m}/{c}": [] for m in args.methods for c in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_tiny_gpt2(os.path.join(tmp, "model"), n_layer=args.layers, n_embd=768, n_head=12)
        for r in range(args.rounds):
            for method in args.methods:
                for config in CONFIGS if r % 2 == 0 else CONFIGS[::-1]:
                    out = os.path.join(tmp, f"{method}-{config}-{r}")
                    step_s, peak = measure(method, config, model_dir, args.data_dir, args.steps, out)
                    runs[f"{method}/{config}"].append({"step_s": step_s, "peak_rss_mib": peak})
                    print(f"round {r} {method:7s} {config:6s} {step_s:.3f} s/step {peak:,.0f} MiB")
    median = lambda key, k: statistics.median(x[k] for x in runs[key])  # noqa: E731
    rows = [
        {
            "method": m,
            "zero3_step_s": median(f"{m}/zero3", "step_s"),
            "fsdp_step_s": median(f"{m}/fsdp", "step_s"),
            "zero3_peak_rss_mib": median(f"{m}/zero3", "peak_rss_mib"),
            "fsdp_peak_rss_mib": median(f"{m}/fsdp", "peak_rss_mib"),
        }
        for m in args.methods
    ]
    for row in rows:
        row["step_time_ratio"] = row["fsdp_step_s"] / row["zero3_step_s"]
        row["peak_memory_ratio"] = row["fsdp_peak_rss_mib"] / row["zero3_peak_rss_mib"]
        print(
            f"{row['method']:7s} FSDP2 / ZeRO-3: step time x{row['step_time_ratio']:.2f}, "
            f"peak memory per process x{row['peak_memory_ratio']:.2f}"
        )
    model = f"GPT-2-small shape, {args.layers} layers, d 768, vocab 1,024, random weights"
    setup = {"model": model, "batch_per_process": BATCH, "max_length": 64, "processes": WORLD}
    atomic_write_json(args.out, {**setup, "steps": args.steps, "rounds": args.rounds, "rows": rows, "runs": runs})


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rank_of"]:
        as_rank(sys.argv[2:])
    else:
        main()
