"""Write the README's benchmark tables from bench/results/*.json (no hand-typed figures).

    python bench/report.py        # rewrites the part of README.md between the bench markers
"""
import glob
import json
import os
import re
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


def gpu_table(path):
    r = json.load(open(path))
    if "precision" not in r:  # the first benchmark (pure bf16 weights, foreach AdamW): kept as it was measured
        lines = [f"{r['device']}, torch {r['torch']}, GPT2-XL shape ({r['layers']} layers, random weights), "
                 f"{r['dtype']} weights and optimizer state (not the scripts' precision), batch {r['batch']} x "
                 f"{r['seq']} tokens, median of {r['steps']} steps, the first version of bench/gpu.py "
                 f"(`{os.path.relpath(path, ROOT)}`):", "",
                 "| method | tokens/s | MFU (6NT or 4NT) | peak memory (GiB) | trainable parameters |",
                 "|---|---|---|---|---|"]
        for row in r["results"]:
            lines.append(f"| {row['method']} | {row['tokens_per_s']:,.0f} | {row['mfu']:.1%} | "
                         f"{row['peak_mem_gib']:.1f} | {row['trainable']:,} |")
        return "\n".join(lines)
    lines = [f"{r['device']}, torch {r['torch']}, GPT2-XL shape ({r['layers']} layers, random weights), "
             f"{r['precision']}, {r['optimizer']}, median of {r['steps']} steps per round "
             f"(`{os.path.relpath(path, ROOT)}`):", "",
             "| batch x tokens | method | tokens/s | vs full | MFU | peak memory (GiB) | trainable |",
             "|---|---|---|---|---|---|---|"]
    rows = r["results"]
    for row in rows:
        full = next((x for x in rows if x["method"] == "full" and (x["batch"], x["seq"]) == (row["batch"], row["seq"])),
                    None)
        ratio = f"{row['tokens_per_s'] / full['tokens_per_s']:.2f}x" if full else ""
        lines.append(f"| {row['batch']} x {row['seq']} | {row['method']} | {row['tokens_per_s']:,.0f} | {ratio} | "
                     f"{row['mfu']:.1%} | {row['peak_mem_gib']:.1f} | {row['trainable']:,} |")
    at = {x["method"]: x for x in rows if (x["batch"], x["seq"]) == (32, 128)}
    checks = []
    if "full" in at:
        checks.append(f"full fine-tuning MFU {at['full']['mfu']:.1%} (target >= 35%)")
        for name, target in (("lora", 1.3), ("prompt", 1.45)):
            if name in at:
                checks.append(f"{name} / full tokens/s {at[name]['tokens_per_s'] / at['full']['tokens_per_s']:.2f} "
                              f"(target >= {target})")
    for name in ("lora", "prompt"):
        if name in at and f"peft_{name}" in at:
            checks.append(f"{name} / peft step time {at[name]['step_s'] / at[f'peft_{name}']['step_s']:.2f} "
                          "(target <= 0.95)")
    return "\n".join(lines + (["", "At 32 x 128: " + "; ".join(checks) + "."] if checks else []))


def speed_table(path):
    r = json.load(open(path))
    s = r["shape"]
    lines = [f"CPU, {s['threads']} threads, GPT-2-small shape ({s['layers']} layers, random weights), fp32, batch "
             f"{s['batch']} x {s['seq']} tokens, {s['rounds']} interleaved rounds of {s['steps']} timed steps "
             f"(`{os.path.relpath(path, ROOT)}`):", "",
             "| method | against | step time ratio | peak memory ratio | target (time) |", "|---|---|---|---|---|"]
    for x in r["ratios"]:
        target = f"<= {x['target']:.2f}" if x["target"] else ""
        met = "" if not x["target"] else (" (met)" if x["time_ratio"] <= x["target"] else " (missed)")
        lines.append(f"| {x['config']} | {x['baseline']} | {x['time_ratio']:.3f} | {x['memory_ratio']:.3f} | "
                     f"{target}{met} |")
    return "\n".join(lines)


def accuracy_table(path):
    r = json.load(open(path))
    b = {t: r["budget"][t] for t in r["summary"]}
    names = {"sst2": "SST-2", "rte": "RTE"}
    budget = "; ".join(f"{names[t]}: the first {x['max_train_samples']} training rows, {x['num_train_epochs']} epoch, "
                       f"max {x['max_length']} tokens, batch {x['batch']}" for t, x in b.items())
    lines = [f"{r['model']}, dev accuracy (%) on the full dev sets, mean +- std over seeds (n); {budget}; "
             f"{r['threads_per_run']} torch thread per run (`{os.path.relpath(path, ROOT)}`):", "",
             "| method | trainable | " + " | ".join(f"{names[t]} | {names[t]} ours - reference" for t in b) + " |",
             "|---|---|" + "---|---|" * len(b)]
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
    full = r["summary"].get("sst2", {}).get("full")
    if full:
        lines += ["", f"Full fine-tuning on SST-2: {full['mean']:.2f} against the target of 88 "
                      f"({'met' if full['mean'] >= 88 else 'missed at this budget'})."]
    errors = [f"- {k}: {x['error']}" for k, x in r["runs"].items() if "error" in x]
    return "\n".join(lines + (["", "Failed runs:", *errors] if errors else []))


def smollm2_sweep_table(path):
    """Validation accuracy of each method at each swept learning rate (bench/accuracy_smollm2.py)."""
    r = json.load(open(path))
    b = r["budget"]
    lines = [f"{r['model']}, SST-2: the first {b['rows']} training rows of which {b['validation']} held out "
             f"(--validation_size) and scored, {b['epochs']} epoch at batch {b['batch']} "
             f"({(b['rows'] - b['validation']) // b['batch']} steps), max {b['max_length']} tokens, seed 0; "
             f"minutes per run on 1-2 threads, often beside other work: an upper bound "
             f"(`{os.path.relpath(path, ROOT)}`):", "",
             "| method | swept flag | validation accuracy (%) by rate | trainable | minutes per run |",
             "|---|---|---|---|---|"]
    for name, spec in r["methods"].items():
        runs = [x for x in r["runs"].values() if x["method"] == name]
        if not runs or not spec["swept"]:
            continue
        cells = ", ".join(f"{x['rate']:g}: " + (f"{100 * x['validation_metrics']['accuracy']:.2f}"
                                                if "validation_metrics" in x else "failed")
                          for x in sorted(runs, key=lambda x: x["rate"]))
        done = [x for x in runs if "train_runtime_s" in x]
        minutes = statistics.mean(x["train_runtime_s"] for x in done) / 60 if done else float("nan")
        lines.append(f"| {name} | `{spec['swept'][0]}` | {cells} | "
                     f"{done[0]['trainable_params'] if done else 0:,} | {minutes:.1f} |")
    return "\n".join(lines)


SST2_DEV_MAJORITY = 100 * 444 / 872  # SST-2 dev: 444 positive of 872 (files written before dev_majority)
TASK_NAMES = {"sst2": "SST-2", "rte": "RTE", "mrpc": "MRPC"}


def smollm2_grid_table(path):
    """Dev accuracy of every method at its script's defaults, mean +- std over seeds, and ours
    minus the reference library's (bench/accuracy_smollm2.py --part grid)."""
    r = json.load(open(path))
    b, summary, majority = r["budget"], r["summary"], r.get("dev_majority", SST2_DEV_MAJORITY)
    lines = [f"{r['model']}, {TASK_NAMES[r['task']]}: the first {b['rows']} training rows, {b['epochs']} epoch at "
             f"batch {b['batch']} ({-(-b['rows'] // b['batch'])} steps), max {b['max_length']} tokens, every script at "
             f"its defaults, scored on the full dev set (majority class {majority:.2f}); minutes per run, "
             f"{r.get('jobs', 1)} run(s) at a time on {r['threads_per_run']} threads each, often beside other work "
             f"(`{os.path.relpath(path, ROOT)}`):", "",
             "| method | trainable | dev accuracy (%), mean +- std (seeds) | above majority | ours - reference "
             "(reference's std) | minutes per run |", "|---|---|---|---|---|---|"]
    for name in sorted(summary, key=lambda n: -summary[n]["mean"]):
        row = summary[name]
        runs = [x for x in r["runs"].values() if x["method"] == name and "metrics" in x]
        gap = (f"{row['minus_reference']:+.2f} ({row['reference_std']:.2f})" if "minus_reference" in row else "")
        timed = [x["train_runtime_s"] for x in runs if "train_runtime_s" in x]  # the references' are not
        minutes = f"{statistics.mean(timed) / 60:.1f}" if timed else ""
        lines.append(f"| {name} | {runs[0]['trainable_params']:,} | {row['mean']:.2f} +- {row['std']:.2f} "
                     f"({row['n']}) | {round(row['mean'] - majority, 2) + 0.0:+.2f} | {gap} | {minutes} |")  # no -0.00
    errors = [f"- {k}: {x['error']}" for k, x in r["runs"].items() if "error" in x]
    return "\n".join(lines + (["", "Failed runs:", *errors] if errors else []))


def smollm2_figure(path, png):
    """Dev accuracy against trainable parameters (log scale), one point per method, the seed
    spread as error bars, the majority class as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = json.load(open(path))
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    params = {name: next(x["trainable_params"] for x in r["runs"].values() if x["method"] == name and "metrics" in x)
              for name in r["summary"]}
    for name, row in r["summary"].items():
        reference = name.startswith("peft:")
        ax.errorbar(params[name], row["mean"], yerr=row["std"], fmt="s" if reference else "o", capsize=3,
                    color="gray" if reference else "C0")
        # The label goes below the point when a close neighbour (within 2x the parameters) scores higher.
        below = any(params[name] / 2 <= params[o] <= params[name] * 2 and r["summary"][o]["mean"] > row["mean"]
                    for o in params if o != name)
        ax.annotate(f"{name} ({row['n']})", (params[name], row["mean"]), textcoords="offset points",
                    xytext=(5, -11 if below else 4), fontsize=8)
    ax.axhline(r.get("dev_majority", SST2_DEV_MAJORITY), color="C3", linestyle="--", linewidth=1,
               label="majority class")
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(f"{TASK_NAMES[r['task']]} dev accuracy (%)")
    ax.set_title(f"SmolLM2-135M, {TASK_NAMES[r['task']]}, {-(-r['budget']['rows'] // r['budget']['batch'])} steps, "
                 "script defaults "
                 "(mean +- std over seeds)", fontsize=9)
    ax.margins(x=0.2)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def support_table(path):
    from support import table

    r = json.load(open(path))
    return (f"{r['model']}; every cell run by `bench/support.py` and by `tests/test_support.py` "
            f"(`{os.path.relpath(path, ROOT)}`). O: trains on every process and saves; X: fails (reason "
            "below); O*: fp16 is a GPU setting: on CPU accelerate runs the fp16 yaml in fp32, so the launch path "
            "is tested, not fp16 numerics.\n\n" + table(r["cells"]))


def newest_first(path):
    """speed-3.json, speed-2.json, speed.json: a re-measure is listed above what it re-measures."""
    number = re.search(r"-(\d+)\.json$", path)
    return -int(number.group(1)) if number else -1


def replace(text, key, parts):
    block = f"<!-- bench:{key} -->\n" + "\n\n".join(parts) + f"\n<!-- /bench:{key} -->"
    return re.sub(rf"<!-- bench:{key} -->.*?<!-- /bench:{key} -->", lambda _: block, text, flags=re.S)


def main():
    results = os.path.join(ROOT, "bench", "results")
    readme = os.path.join(ROOT, "README.md")
    text = open(readme).read()
    text = replace(text, "gpu", [gpu_table(p) for p in sorted(glob.glob(os.path.join(results, "gpu*.json")))])
    speed = sorted(glob.glob(os.path.join(results, "speed*.json")), key=newest_first)
    text = replace(text, "speed", [speed_table(p) for p in speed])
    minilm = [p for p in glob.glob(os.path.join(results, "accuracy*.json")) if "smollm2" not in p]
    text = replace(text, "accuracy", [accuracy_table(p) for p in sorted(
        minilm, key=lambda p: (os.path.basename(p) != "accuracy.json", p))])
    sweep = os.path.join(results, "accuracy-smollm2-sweep.json")
    if os.path.exists(sweep):
        text = replace(text, "smollm2", [smollm2_sweep_table(sweep)])
    grid = os.path.join(results, "accuracy-smollm2-grid.json")
    if os.path.exists(grid):
        text = replace(text, "smollm2-grid", [smollm2_grid_table(grid)])
        smollm2_figure(grid, os.path.join(results, "accuracy-smollm2-grid.png"))
    text = replace(text, "support", [support_table(os.path.join(results, "support.json"))])
    open(readme, "w").write(text)


if __name__ == "__main__":
    main()
