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


def main():
    parts = [gpu_table(p) for p in sorted(glob.glob(os.path.join(ROOT, "bench", "results", "gpu*.json")))]
    readme = os.path.join(ROOT, "README.md")
    text = open(readme).read()
    block = "<!-- bench:gpu -->\n" + "\n\n".join(parts) + "\n<!-- /bench:gpu -->"
    text = re.sub(r"<!-- bench:gpu -->.*?<!-- /bench:gpu -->", lambda _: block, text, flags=re.S)
    open(readme, "w").write(text)


if __name__ == "__main__":
    main()
