"""Write the benchmark tables of README.md and docs/ from bench/results/*.json (no hand-typed
figures): the parts between `<!-- bench:NAME -->` markers.

    python bench/report.py
"""

import glob
import json
import math
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def gpu_table(path):
    r = json.load(open(path))
    # the first benchmark (pure bf16 weights, foreach AdamW): kept as it was measured
    if "precision" not in r:
        lines = [
            f"{r['device']}, torch {r['torch']}, GPT2-XL shape ({r['layers']} layers, random weights), "
            f"{r['dtype']} weights and optimizer state (not the scripts' precision), batch {r['batch']} x "
            f"{r['seq']} tokens, median of {r['steps']} steps, the first version of bench/gpu.py "
            f"(`{os.path.relpath(path, ROOT)}`):",
            "",
            "| method | tokens/s | MFU (6NT or 4NT) | peak memory (GiB) | trainable parameters |",
            "|---|---|---|---|---|",
        ]
        for row in r["results"]:
            lines.append(
                f"| {row['method']} | {row['tokens_per_s']:,.0f} | {row['mfu']:.1%} | "
                f"{memory(row)} | {row['trainable']:,} |"
            )
        return "\n".join(lines)
    lines = [
        f"{r['device']}, torch {r['torch']}, GPT2-XL shape ({r['layers']} layers, random weights), "
        f"{r['precision']}, {r['optimizer']}, median of {r['steps']} steps per round "
        f"(`{os.path.relpath(path, ROOT)}`):",
        "",
        "| batch x tokens | method | tokens/s | vs full | MFU | peak memory (GiB) | trainable |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = r["results"]
    for row in rows:
        full = next(
            (x for x in rows if x["method"] == "full" and (x["batch"], x["seq"]) == (row["batch"], row["seq"])), None
        )
        ratio = f"{row['tokens_per_s'] / full['tokens_per_s']:.2f}x" if full else ""
        lines.append(
            f"| {row['batch']} x {row['seq']} | {row['method']} | {row['tokens_per_s']:,.0f} | {ratio} | "
            f"{row['mfu']:.1%} | {memory(row)} | {row['trainable']:,} |"
        )
    for method, error in r.get("errors", {}).items():
        lines.append(
            f"| {rows[0]['batch'] if rows else ''} x {rows[0]['seq'] if rows else ''} | {method} | "
            f"failed: {error} | | | | |"
        )
    at = {x["method"]: x for x in rows if (x["batch"], x["seq"]) == (32, 128)}
    checks = []
    if "full" in at:
        checks.append(f"full fine-tuning MFU {at['full']['mfu']:.1%} (target >= 35%)")
        for name, target in (("lora", 1.3), ("prompt", 1.45)):
            if name in at:
                checks.append(
                    f"{name} / full tokens/s {at[name]['tokens_per_s'] / at['full']['tokens_per_s']:.2f} "
                    f"(target >= {target})"
                )
    for name in ("lora", "prompt"):
        if name in at and f"peft_{name}" in at:
            checks.append(
                f"{name} / peft step time {at[name]['step_s'] / at[f'peft_{name}']['step_s']:.2f} (target <= 0.95)"
            )
    return "\n".join(lines + (["", "At 32 x 128: " + "; ".join(checks) + "."] if checks else []))


def memory(row):
    """Peak GPU memory in GiB, or - where none was measured (a CPU run)."""
    return "-" if row.get("peak_mem_gib") is None else f"{row['peak_mem_gib']:.1f}"


def speed_table(path):
    r = json.load(open(path))
    s = r["shape"]
    lines = [
        f"CPU, {s['threads']} threads, GPT-2-small shape ({s['layers']} layers, random weights), fp32, batch "
        f"{s['batch']} x {s['seq']} tokens, {s['rounds']} interleaved rounds of {s['steps']} timed steps "
        f"(`{os.path.relpath(path, ROOT)}`):",
        "",
    ]
    saved = all("saved_ratio" in x for x in r["ratios"])  # (results files written before it lack it)
    lines += ["| method | against | step time ratio | peak memory ratio |" + " saved for backward ratio |" * saved]
    lines += ["|---|---|---|---|" + "---|" * saved]
    for x in r["ratios"]:
        row = f"| {x['config']} | {x['baseline']} | {x['time_ratio']:.3f} | {x['memory_ratio']:.3f} |"
        lines.append(row + (f" {x['saved_ratio']:.3f} |" if saved else ""))
    return "\n".join(lines)


def sharding_table(path):
    """bench/sharding.py's FSDP2 against ZeRO-3, as ratios."""
    r = json.load(open(path))
    lines = [
        f"CPU, {r['processes']} processes over gloo, {r['model']}, batch {r['batch_per_process']} a "
        f"process, max {r['max_length']} tokens, {r['steps']} steps a run, median of "
        f"{r['rounds']} interleaved rounds (`python bench/sharding.py`, "
        f"`{os.path.relpath(path, ROOT)}`):",
        "",
        "| script | step time, FSDP2 / ZeRO-3 | peak memory a process, FSDP2 / ZeRO-3 | ZeRO-3: s/step, MiB |",
        "|---|---|---|---|",
    ]
    for x in r["rows"]:
        lines.append(
            f"| `train_{x['method']}.py` | {x['step_time_ratio']:.2f} | "
            f"{x['peak_memory_ratio']:.2f} | {x['zero3_step_s']:.2f}, "
            f"{x['zero3_peak_rss_mib']:,.0f} |"
        )
    return "\n".join(lines)


def failed_and_warned(runs):
    """The lines under a table: the runs that failed, and what a run said of itself (results.json's warnings, the
    advice cut): a run that learned nothing stays in the table with its word."""
    errors = [f"- {k}: {x['error']}" for k, x in runs.items() if "error" in x]
    warned = [f"- {k}: {w.split('; ')[0]}" for k, x in runs.items() for w in x.get("warnings", [])]
    return (["", "Failed runs:", *errors] if errors else []) + (["", "Warnings:", *warned] if warned else [])


def accuracy_table(path):
    r = json.load(open(path))
    b = {t: r["budget"][t] for t in r["summary"]}
    names = {"sst2": "SST-2", "rte": "RTE"}
    budget = "; ".join(
        f"{names[t]}: the first {x['max_train_samples']} training rows, {x['num_train_epochs']} epoch, "
        f"max {x['max_length']} tokens, batch {x['batch']}"
        for t, x in b.items()
    )
    lines = [
        f"{r['model']}, dev accuracy (%) on the full dev sets, mean +- std over seeds (n); {budget}; "
        f"{r['threads_per_run']} torch thread per run (`{os.path.relpath(path, ROOT)}`):",
        "",
        "| method | trainable | " + " | ".join(f"{names[t]} | {names[t]} ours - reference" for t in b) + " |",
        "|---|---|" + "---|---|" * len(b),
    ]
    for name in r["methods"]:
        runs = [x for x in r["runs"].values() if x["method"] == name and "trainable_params" in x]
        if not runs:
            continue
        cells = []
        for t in b:
            row = r["summary"][t].get(name)
            cells.append(f"{row['mean']:.2f} +- {row['std']:.2f} ({row['n']})" if row else "")
            gap = row.get("minus_reference") if row else None
            cells.append("" if gap is None else f"{gap:+.2f} ({'within' if abs(gap) <= 0.5 else 'outside'} 0.5)")
        lines.append(f"| {name} | {runs[0]['trainable_params']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines + failed_and_warned(r["runs"]))


def smollm2_sweep_table(path):
    """Validation accuracy of each method at each swept learning rate (bench/accuracy_smollm2.py)."""
    r = json.load(open(path))
    b = r["budget"]
    lines = [
        f"{r['model']}, SST-2: the first {b['rows']} training rows of which {b['validation']} held out "
        f"(--validation_size) and scored, {b['epochs']} epoch at batch {b['batch']} "
        f"({(b['rows'] - b['validation']) // b['batch']} steps), max {b['max_length']} tokens, seed 0; "
        f"minutes per run on 1-2 threads, often beside other work: an upper bound "
        f"(`{os.path.relpath(path, ROOT)}`):",
        "",
        "| method | swept flag | validation accuracy (%) by rate | trainable | minutes per run |",
        "|---|---|---|---|---|",
    ]
    for name, spec in r["methods"].items():
        runs = [x for x in r["runs"].values() if x["method"] == name]
        if not runs or not spec["swept"]:
            continue
        cells = ", ".join(
            f"{x['rate']:g}: "
            + (f"{100 * x['validation_metrics']['accuracy']:.2f}" if "validation_metrics" in x else "failed")
            for x in sorted(runs, key=lambda x: x["rate"])
        )
        done = [x for x in runs if "train_runtime_s" in x]
        minutes = statistics.mean(x["train_runtime_s"] for x in done) / 60 if done else float("nan")
        lines.append(
            f"| {name} | `{spec['swept'][0]}` | {cells} | "
            f"{done[0]['trainable_params'] if done else 0:,} | {minutes:.1f} |"
        )
    return "\n".join(lines)


# SST-2 dev: 444 positive of 872 (files written before dev_majority)
SST2_DEV_MAJORITY = 100 * 444 / 872
TASK_NAMES = {"sst2": "SST-2", "rte": "RTE", "mrpc": "MRPC"}
DEV_ROWS = {"sst2": 872, "rte": 277, "mrpc": 408}  # GLUE's dev sets, which the grid scores in full


def wilson(percent, rows, z=1.96):
    """The 95% interval (%, Wilson's) of an accuracy measured on `rows` rows: how sure one run's score is."""
    p, q = percent / 100, z * z / rows
    centre, half = (p + q / 2) / (1 + q), z * math.sqrt(p * (1 - p) / rows + q / (4 * rows)) / (1 + q)
    return 100 * (centre - half), 100 * (centre + half)


def score(row, rows):
    """A row's mean dev accuracy with one run's 95% interval, beside the spread over its seeds."""
    low, high = wilson(row["mean"], rows)
    seeds = "1 seed" if row["n"] == 1 else f"{row['n']} seeds, std {row['std']:.2f}"
    return f"{row['mean']:.2f} [{low:.1f}, {high:.1f}] ({seeds})"


def smollm2_grid_table(path):
    """Dev accuracy of every method at its script's defaults, mean +- std over seeds, and ours
    minus the reference library's (bench/accuracy_smollm2.py --part grid)."""
    r = json.load(open(path))
    b, summary, majority = r["budget"], r["summary"], r.get("dev_majority", SST2_DEV_MAJORITY)
    scored = f"the first {b['max_eval_samples']} dev rows" if b.get("max_eval_samples") else "the full dev set"
    lines = [
        f"{r['model']}, {TASK_NAMES[r['task']]}: the first {b['rows']} training rows, {b['epochs']} epoch at "
        f"batch {b['batch']} ({-(-b['rows'] // b['batch'])} steps), max {b['max_length']} tokens, every script at "
        f"its defaults, scored on {scored} (majority class {majority:.2f}); minutes per run, "
        f"{r.get('jobs', 1)} run(s) at a time on {r['threads_per_run']} threads each, often beside other work "
        f"(`{os.path.relpath(path, ROOT)}`):",
        "",
        "| method | trainable | dev accuracy (%): mean [a run's 95% interval] (seeds) | above majority | "
        "ours - reference (reference's std) | minutes per run |",
        "|---|---|---|---|---|---|",
    ]
    for name in sorted(summary, key=lambda n: -summary[n]["mean"]):
        row = summary[name]
        runs = [x for x in r["runs"].values() if x["method"] == name and "metrics" in x]
        gap = f"{row['minus_reference']:+.2f} ({row['reference_std']:.2f})" if "minus_reference" in row else ""
        timed = [x["train_runtime_s"] for x in runs if "train_runtime_s" in x]  # the references' are not
        minutes = f"{statistics.mean(timed) / 60:.1f}" if timed else ""
        # no -0.00
        lines.append(
            f"| {name} | {runs[0]['trainable_params']:,} | {score(row, DEV_ROWS[r['task']])} "
            f"| {round(row['mean'] - majority, 2) + 0.0:+.2f} | {gap} | {minutes} |"
        )
    return "\n".join(lines + failed_and_warned(r["runs"]))


def study_table(path, grid_path):
    """The study's runs (bench/accuracy_smollm2.py --part study: other rates and lengths) beside the grid's runs of the
    same methods and seeds at the scripts' defaults, one row a run."""
    r, grid = json.load(open(path)), json.load(open(grid_path))
    b, majority = r["budget"], r["dev_majority"]
    steps = -(-b["rows"] // b["batch"])
    lines = [
        f"{r['model']}, {TASK_NAMES[r['task']]}: the first {b['rows']} training rows at batch {b['batch']} "
        f"({steps} steps an epoch), max {b['max_length']} tokens, scored on the full dev set (majority class "
        f"{majority:.2f}) (`{os.path.relpath(path, ROOT)}`, and the grid's runs at the defaults):",
        "",
        "| method | seed | learning rate | epochs (steps) | dev accuracy (%) [95% interval] | above majority | minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    studied = {(x["method"], x["seed"]) for x in r["runs"].values()}
    runs = [(x, x["rate"], x["epochs"]) for x in r["runs"].values() if "metrics" in x]
    runs += [(x, None, 1) for x in grid["runs"].values() if (x["method"], x["seed"]) in studied and "metrics" in x]
    for x, rate, epochs in sorted(runs, key=lambda t: (t[0]["method"], t[0]["seed"], t[2], t[1] or 0)):
        accuracy = 100 * x["metrics"]["accuracy"]
        low, high = wilson(accuracy, DEV_ROWS[r["task"]])
        rate = "the script's" if rate is None else f"{rate:g}"
        minutes = f"{x['train_runtime_s'] / 60:.0f}" if "train_runtime_s" in x else ""
        lines.append(
            f"| {x['method']} | {x['seed']} | {rate} | {epochs} ({epochs * steps}) | {accuracy:.2f} [{low:.1f}, "
            f"{high:.1f}] | {round(accuracy - majority, 2) + 0.0:+.2f} | {minutes} |"
        )
    return "\n".join(lines + failed_and_warned(r["runs"]))


def smollm2_figure(path, png):
    """Dev accuracy against trainable parameters (log scale), one point per method, the seed
    spread as error bars, the majority class as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = json.load(open(path))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    params = {
        name: next(x["trainable_params"] for x in r["runs"].values() if x["method"] == name and "metrics" in x)
        for name in r["summary"]
    }
    for name, row in r["summary"].items():
        reference = name.startswith("peft:")
        ax.errorbar(
            params[name],
            row["mean"],
            yerr=row["std"],
            fmt="s" if reference else "o",
            capsize=3,
            color="gray" if reference else "C0",
        )
        # The label goes below the point when a close neighbour (within 2x the parameters) scores higher.
        below = any(
            params[name] / 2 <= params[o] <= params[name] * 2 and r["summary"][o]["mean"] > row["mean"]
            for o in params
            if o != name
        )
        ax.annotate(
            f"{name} ({row['n']})",
            (params[name], row["mean"]),
            textcoords="offset points",
            xytext=(5, -11 if below else 4),
            fontsize=8,
        )
    ax.axhline(
        r.get("dev_majority", SST2_DEV_MAJORITY), color="C3", linestyle="--", linewidth=1, label="majority class"
    )
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{TASK_NAMES[r['task']]} dev accuracy (%)")
    ax.set_title(
        f"SmolLM2-135M, {TASK_NAMES[r['task']]}, {-(-r['budget']['rows'] // r['budget']['batch'])} steps, "
        "script defaults "
        "(mean +- std over seeds)",
        fontsize=9,
    )
    ax.margins(x=0.2)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def gpu_plan(folder):
    """What bench/gpu_grid.sh brought back from a GPU machine, copied into `folder`: the card, the
    speed JSON per shape (speed/) and the grid's JSON per task."""
    grids = sorted(glob.glob(os.path.join(folder, "accuracy-smollm2-grid-*.json")))
    speeds = sorted(glob.glob(os.path.join(folder, "speed", "*.json")))
    if not grids and not speeds:
        return ["No GPU plan has run yet: the tables appear here when its results are copied in."]
    card = os.path.join(folder, "card.txt")
    parts = [f"On {open(card).read().strip()}:"] if os.path.exists(card) else []
    parts += [gpu_table(p) for p in speeds]
    return parts + [smollm2_grid_table(p) for p in grids]


def support_table(path):
    from bench.support import table

    r = json.load(open(path))
    return (
        f"{r['model']}; every cell run by `bench/support.py` and by `tests/launch/test_matrix.py` "
        "(the FSDP2 cells by `tests/launch/test_fsdp.py`, which also resumes each bitwise and "
        f"reloads its folder) (`{os.path.relpath(path, ROOT)}`). O: trains on every process and "
        "saves; X: fails (reason "
        "below); O*: fp16 is a GPU setting: on CPU accelerate runs the fp16 yaml in fp32, so the launch path "
        "is tested, not fp16 numerics.\n\n" + table(r["cells"])
    )


# The README's methods table: (script, method, the grid's run names: ours first).
METHODS = [
    ("train_full.py", "full fine-tuning", "full"),
    ("train_lora.py", "LoRA (Hu et al. 2021)", "lora"),
    ("train_lora.py --use_dora", "DoRA (Liu et al. 2024)", "dora"),
    ("train_lora.py --use_rslora --lora_r 64", "rsLoRA (Kalajdzievski 2023), r 64", "rslora-r64"),
    ("train_lora.py --lora_r 64", "LoRA at r 64, rsLoRA's baseline", "lora-r64"),
    ("train_lora.py --loraplus_lr_ratio 16", "LoRA+ (Hayou et al. 2024), ratio 16", "loraplus"),
    ("train_prefix.py", "prefix tuning (Li and Liang 2021)", "prefix"),
    ("train_adapter.py", "Houlsby adapters (Houlsby et al. 2019)", "houlsby"),
    ("train_adapter.py --variant pfeiffer", "Pfeiffer adapters (Pfeiffer et al. 2020)", "pfeiffer"),
    ("train_prompt.py", "prompt tuning (Lester et al. 2021)", "prompt"),
    ("train_idpg.py", "IDPG (Wu et al. 2022), a separate frozen encoder (a copy)", "idpg"),
    ("train_idpg.py --encoder_name_or_path self", "IDPG, the backbone as its own encoder", "idpg-self"),
    ("train_idpg.py --prompt_layers all", "M-IDPG: a prompt at every layer (self)", "m-idpg"),
    ("train_idpg.py --prompt_only", "PG: learned encoder inputs, one prompt", "pg"),
]


def methods_table(path):
    """Every script and variant, its trainable share of SmolLM2-135M and its SST-2 dev accuracy
    there at the script's defaults (from the grid)."""
    r = json.load(open(path))
    summary = r["summary"]
    runs = [x for x in r["runs"].values() if "metrics" in x]
    trainable = {x["method"]: x["trainable_params"] for x in runs}
    total = trainable.get("full")
    lines = [
        "| script | method | trains (share of SmolLM2-135M) | SST-2 dev accuracy (%), SmolLM2-135M: mean [a run's 95% "
        "interval] |",
        "|---|---|---|---|",
    ]
    for script, method, name in METHODS:
        share = f"{100 * trainable[name] / total:.3g}%" if name in trainable and total else ""
        row = summary.get(name)
        shown = score(row, DEV_ROWS["sst2"]) if row else "not run yet at the current defaults"
        lines.append(f"| `{script}` | {method} | {share} | {shown} |")
    b = r["budget"]
    steps = -(-b["rows"] // b["batch"])
    lines += ["", *twins(r["runs"], [name for _, _, name in METHODS])]
    lines += [paired(r["runs"]), ""] if paired(r["runs"]) else []
    lines += [
        f"At each script's defaults, on SST-2's first {b['rows']:,} training rows ({steps} steps), scored "
        f"on the full dev set, where the majority class scores {r['dev_majority']:.2f}; the other "
        "methods, the references, the figure, and every row at the earlier defaults (before the gradients were "
        "clipped): [docs/benchmarks.md](docs/benchmarks.md)."
    ]
    return "\n".join(lines)


def paired(runs, a="idpg", b="prompt"):
    """`a` minus `b` on the same seed (the same rows, in the same order), per seed, and their mean with its 95%
    interval (Student's t over the seeds): the paper's claim is that IDPG beats prompt tuning."""
    from scipy import stats

    seeds = sorted(int(k.split("/")[1]) for k in runs if k.startswith(f"{a}/") and f"{b}/{k.split('/')[1]}" in runs)
    diffs = [100 * (runs[f"{a}/{s}"]["metrics"]["accuracy"] - runs[f"{b}/{s}"]["metrics"]["accuracy"]) for s in seeds]
    if not diffs:
        return ""
    shown = ", ".join(f"{d:+.2f} (seed {s})" for s, d in zip(seeds, diffs))
    mean = sum(diffs) / len(diffs)
    text = f"{a} minus {b}, the same seed (the same rows in the same order): {shown}; mean {mean:+.2f} points"
    if len(diffs) > 1:
        half = stats.t.ppf(0.975, len(diffs) - 1) * stats.tstd(diffs) / len(diffs) ** 0.5
        verdict = "cannot tell the two apart" if mean - half <= 0 <= mean + half else "tells them apart"
        text += f", 95% interval [{mean - half:+.2f}, {mean + half:+.2f}] over {len(diffs)} seeds: it {verdict}"
    return text + "."


def twins(runs, names):
    """A line for each pair of rows whose runs of the same seed score the same: one computation (the same loss at
    every logged step), or equal by chance (their losses differ)."""
    lines = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for seed in range(3):
                x, y = runs.get(f"{a}/{seed}", {}), runs.get(f"{b}/{seed}", {})
                if "metrics" not in x or "metrics" not in y or x["metrics"] != y["metrics"]:
                    continue
                loss = [[h["loss"] for h in run["log_history"] if "loss" in h] for run in (x, y)]
                if loss[0] == loss[1]:
                    why = "the same computation here: the same loss at every logged step"
                    if {a, b} == {"idpg", "idpg-self"}:  # (why they are)
                        why += " (a frozen copy of the backbone encodes as the backbone does: SmolLM2 has no dropout)"
                else:
                    why = f"equal by chance: their last logged losses are {loss[0][-1]:.4f} and {loss[1][-1]:.4f}"
                lines.append(f"The grid's {a} and {b} score the same at seed {seed}, {why}.")
    return [" ".join(lines), ""] if lines else []


def grid_targets(path):
    """What the grid shows against its targets: every method at least 10 points above the
    majority class, LoRA and the adapters within 2 points of full fine-tuning, IDPG at least prompt
    tuning's mean."""
    r = json.load(open(path))
    summary = r["summary"]
    majority = r["dev_majority"]
    mean = lambda n: summary[n]["mean"]  # noqa: E731
    lines = []
    low = [n for n in summary if mean(n) < majority + 10]
    high = [n for n in summary if n not in low]
    if high:
        lines.append(f"- At least 10 points above the majority class: {', '.join(sorted(high))}.")
    if low:
        shown = ", ".join(f"{n} ({mean(n):.2f})" for n in sorted(low))
        lines.append(f"- Less than 10 points above the majority class: {shown}.")
    if "full" in summary:
        for name in ("lora", "houlsby", "pfeiffer"):
            if name in summary:
                gap = mean(name) - mean("full")
                verdict = "within 2" if abs(gap) <= 2 else "better by more than 2" if gap > 0 else "more than 2"
                lines.append(f"- {name} against full fine-tuning: {gap:+.2f} points ({verdict}).")
    for idpg in ("idpg", "idpg-self"):
        if idpg in summary and "prompt" in summary:
            gap = mean(idpg) - mean("prompt")
            verdict = "at least" if gap >= 0 else "below"
            lines.append(f"- {idpg} against prompt tuning's mean: {gap:+.2f} points ({verdict} it).")
    unseeded = sorted(n for n in summary if summary[n]["n"] < 3)
    if unseeded:
        lines.append(f"- Fewer than 3 seeds so far: {', '.join(unseeded)}.")
    return "\n".join(lines)


def replace(text, key, parts):
    block = f"<!-- bench:{key} -->\n" + "\n\n".join(parts) + f"\n<!-- /bench:{key} -->"
    return re.sub(rf"<!-- bench:{key} -->.*?<!-- /bench:{key} -->", lambda _: block, text, flags=re.S)


def rewrite(path, sections):
    """Replace each marked section of the file at `path` ({key: [parts]})."""
    text = open(path).read()
    for key, parts in sections.items():
        text = replace(text, key, parts)
    open(path, "w").write(text)


def main():
    results = os.path.join(ROOT, "bench", "results")
    grid = os.path.join(results, "accuracy-smollm2-grid.json")
    rewrite(os.path.join(ROOT, "README.md"), {"methods": [methods_table(grid)]})
    grids = [grid, *sorted(glob.glob(os.path.join(results, "accuracy-smollm2-grid-*.json")))]
    grids += sorted(glob.glob(os.path.join(results, "gpu-grid", "accuracy-smollm2-grid-*.json")))
    smollm2 = [smollm2_grid_table(p) for p in grids if "gpu-grid" not in p]
    smollm2.insert(1, "IDPG against prompt tuning on SST-2: " + paired(json.load(open(grid))["runs"]))
    # What the grids show against the project's targets: for us, in bench/README.md
    targets = [f"`{os.path.relpath(p, ROOT)}`:\n\n{grid_targets(p)}" for p in grids]
    rewrite(os.path.join(ROOT, "bench", "README.md"), {"targets": targets})
    unclipped = os.path.join(results, "old", "accuracy-smollm2-grid-unclipped.json")
    if os.path.exists(unclipped):
        smollm2 += [
            "The same grid at the earlier defaults, before the gradients were clipped:",
            smollm2_grid_table(unclipped),
        ]
    minilm = [p for p in glob.glob(os.path.join(results, "accuracy*.json")) if "smollm2" not in p]
    minilm.sort(key=lambda p: (os.path.basename(p) != "accuracy.json", p))
    rewrite(
        os.path.join(ROOT, "docs", "benchmarks.md"),
        {
            "smollm2-grid": smollm2,
            "smollm2": [smollm2_sweep_table(os.path.join(results, "accuracy-smollm2-sweep.json"))],
            "accuracy": [accuracy_table(p) for p in minilm],
            "speed": [
                speed_table(p)
                for p in (
                    os.path.join(results, f) for f in ("speed.json", "speed-gc.json", "speed-lora-variants.json")
                )
                if os.path.exists(p)
            ],
            "gpu": [gpu_table(p) for p in sorted(glob.glob(os.path.join(results, "gpu*.json")))],
            "gpu-plan": gpu_plan(os.path.join(results, "gpu-grid")),
        },
    )
    smollm2_figure(grid, os.path.join(results, "accuracy-smollm2-grid.png"))
    study = os.path.join(results, "accuracy-smollm2-study-rte.json")
    if os.path.exists(study):
        grid_rte = os.path.join(results, "accuracy-smollm2-grid-rte.json")
        rewrite(os.path.join(ROOT, "docs", "methods.md"), {"rte-study": [study_table(study, grid_rte)]})
    support = os.path.join(results, "support.json")
    rewrite(
        os.path.join(ROOT, "docs", "distributed.md"),
        {"support": [support_table(support)], "sharding": [sharding_table(os.path.join(results, "sharding.json"))]},
    )


if __name__ == "__main__":
    main()
