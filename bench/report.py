"""Write the README's benchmark tables from bench/results/*.json (no hand-typed figures).

    python bench/report.py        # rewrites the part of README.md between the bench markers
"""
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))


def gpu_table(path):
    r = json.load(open(path))
    lines = [f"{r['device']}, torch {r['torch']}, GPT2-XL shape ({r['layers']} layers, random weights), {r['dtype']}, "
             f"batch {r['batch']} x {r['seq']} tokens, median of {r['steps']} steps (`{os.path.relpath(path, ROOT)}`):",
             "", "| method | tokens/s | MFU | peak memory (GiB) | trainable parameters |", "|---|---|---|---|---|"]
    for row in r["results"]:
        lines.append(f"| {row['method']} | {row['tokens_per_s']:,.0f} | {row['mfu']:.1%} | {row['peak_mem_gib']:.1f} | "
                     f"{row['trainable']:,} |")
    return "\n".join(lines)


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
    text = replace(text, "accuracy", [accuracy_table(p) for p in sorted(glob.glob(os.path.join(
        results, "accuracy*.json")), key=lambda p: (os.path.basename(p) != "accuracy.json", p))])
    text = replace(text, "support", [support_table(os.path.join(results, "support.json"))])
    open(readme, "w").write(text)


if __name__ == "__main__":
    main()
