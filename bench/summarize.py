"""One table of the runs in some output folders, and a bar chart of their scores.

    python bench/summarize.py runs/*                    # prints a markdown table
    python bench/summarize.py runs/* --png runs.png     # and draws the chart

A row per finished run (a folder with results.json): the script, the task, the share of the
parameters that trained, the main metric at the end and the best, what always predicting the
majority class scores, the training time, and the run's warnings.
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def rows(folders):
    """The finished runs among `folders`, as dicts of the table's columns."""
    from common.tasks import TASKS

    found = []
    for folder in folders:
        path = os.path.join(folder, "results.json")
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            r = json.load(f)
        metric = TASKS[r["task"]].metric
        found.append(
            {
                "run": os.path.basename(os.path.normpath(folder)),
                "method": r["method"],
                "task": r["task"],
                "trains": 100 * r["trainable_params"] / r["total_params"],
                "metric": metric,
                "final": r["metrics"].get(metric),
                "best": r["best_metrics"].get(metric),
                "majority": (r.get("majority_metrics") or {}).get(metric),
                "minutes": r["train_runtime_s"] / 60,
                "warnings": len(r.get("warnings", [])),
            }
        )
    return found


def table(found):
    def score(x):
        return "" if x is None else f"{100 * x:.2f}"

    lines = [
        "| run | method | task | trains (%) | metric | final | best | majority | minutes | warnings |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in found:
        lines.append(
            f"| {r['run']} | {r['method']} | {r['task']} | {r['trains']:.3g} | {r['metric']} | "
            f"{score(r['final'])} | {score(r['best'])} | {score(r['majority'])} | "
            f"{r['minutes']:.1f} | {r['warnings']} |"
        )
    return "\n".join(lines)


def chart(found, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.8 * len(found) + 2), 3.5), dpi=100)
    names = [r["run"] for r in found]
    ax.bar(names, [100 * (r["final"] or 0) for r in found], color="C0", label="final")
    ax.scatter(
        names,
        [100 * (r["majority"] or 0) for r in found],
        color="C3",
        marker="_",
        s=400,
        label="majority class",
        zorder=3,
    )
    ax.set_ylabel("main metric (%)")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", help="output folders (runs/*)")
    p.add_argument("--png", default=None, help="also draw a bar chart of the final scores")
    args = p.parse_args(argv)
    found = rows(args.folders)
    if not found:
        sys.exit("error: no finished run (results.json) in those folders")
    print(table(found))
    if args.png:
        chart(found, args.png)
        print(f"chart: {args.png}")


if __name__ == "__main__":
    main()
