"""Write the README's benchmark tables from bench/results/*.json (no hand-typed figures).

    python bench/report.py        # rewrites the part of README.md between the bench markers
"""
import glob
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def replace(text, key, parts):
    block = f"<!-- bench:{key} -->\n" + "\n\n".join(parts) + f"\n<!-- /bench:{key} -->"
    return re.sub(rf"<!-- bench:{key} -->.*?<!-- /bench:{key} -->", lambda _: block, text, flags=re.S)


def main():
    results = os.path.join(ROOT, "bench", "results")
    readme = os.path.join(ROOT, "README.md")
    text = open(readme).read()
    text = replace(text, "gpu", [gpu_table(p) for p in sorted(glob.glob(os.path.join(results, "gpu*.json")))])
    text = replace(text, "speed", [speed_table(p) for p in sorted(glob.glob(os.path.join(results, "speed*.json")))])
    open(readme, "w").write(text)


if __name__ == "__main__":
    main()
