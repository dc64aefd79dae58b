"""GPU-hours of recipes/seed_gpt2xl.sh, estimated from the measured GPU throughput.

For each recipe: the padded training tokens of one epoch (random batches of 12 rows, each padded to
its longest row, at most 128 tokens; the validation rows held out), times its epochs, divided by
the method's tokens/s on one GPU at GPT2-XL shape (bench/results/gpu-*.json). The token counts
come from the real GLUE files with a local tokenizer (default: SmolLM2's, a 49k BPE close to
GPT-2's 50k, which is not available offline); MNLI's train rows are not here, so its dev_matched
rows stand in for their lengths. An upper bound on the training time: early stopping ends most runs
sooner. Evaluation is left out (about 10-25% more: a forward pass over validation and test each epoch).

    python bench/seed_cost.py                       # prints the README's table
"""

import argparse
import json
import os
import random
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RECIPES = os.path.join(ROOT, "recipes", "seed_gpt2xl.sh")
# The GPU table's row for each script (IDPG's variants run at IDPG's speed; see the caveats printed).
THROUGHPUT_ROW = {
    "train_full.py": "full",
    "train_lora.py": "lora",
    "train_prefix.py": "prefix",
    "train_prompt.py": "prompt",
    "train_idpg.py": "idpg",
}


def parse_recipes(path=RECIPES):
    """(comment, argv) for each command of the recipes file; the comment is the first line of the
    comment block right above the command."""
    lines, found = open(path).read().splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("accelerate launch"):
            command, j = line, i
            while command.endswith("\\"):
                j += 1
                command = command[:-1] + lines[j]
            k = i - 1
            while lines[k - 1].startswith("#"):
                k -= 1
            found.append((lines[k], shlex.split(command)))
    return found


def flag(argv, name, default=None):
    return argv[argv.index(name) + 1] if name in argv else default


def padded_tokens(lengths, batch=12, seed=0):
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    return sum(
        batch_len * max(lengths[i] for i in order[s : s + batch_len])
        for s in range(0, len(order), batch)
        for batch_len in [len(order[s : s + batch])]
    )


def main():
    from transformers import AutoTokenizer

    from common.data import read_tsv
    from common.tasks import TASKS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--tokenizer",
        default=os.path.join(ROOT, ".cache", "smollm2-135m"),
        help="a local tokenizer folder (python bench/smollm2.py builds the default)",
    )
    p.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "glue"))
    p.add_argument("--throughput", default=os.path.join(ROOT, "bench", "results", "gpu-h100.json"))
    args = p.parse_args()
    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    gpu = json.load(open(args.throughput))
    speed = {r["method"]: r["tokens_per_s"] for r in gpu["results"]}
    files = {"mnli": "MNLI/dev_matched.tsv", "sst2": "SST-2/train.tsv", "rte": "RTE/train.tsv"}
    rows = {"mnli": 40000, "sst2": None, "rte": None}  # MNLI-10%: the first 40,000 rows
    lengths = {}
    for task, name in files.items():
        data = read_tsv(task, os.path.join(args.data_dir, name))
        enc = tok(*[data[k] for k in TASKS[task].text_keys], truncation=True, max_length=128)
        lengths[task] = [len(x) for x in enc["input_ids"]]
    print(f"| recipe | epochs | padded tokens per epoch | GPU-hours (at most, {gpu['device']}) |")
    print("|---|---|---|---|")
    total = 0.0
    for comment, argv in parse_recipes():
        script = next(a for a in argv if a.startswith("train_"))
        task, epochs = flag(argv, "--task"), int(flag(argv, "--num_train_epochs"))
        n = (rows[task] or len(lengths[task])) - int(flag(argv, "--validation_size", 0))
        sample = lengths[task] * (n // len(lengths[task]) + 1)
        tokens = padded_tokens(sample[:n])
        row = "houlsby" if "houlsby" in argv else "pfeiffer" if "pfeiffer" in argv else THROUGHPUT_ROW[script]
        hours = epochs * tokens / speed[row] / 3600
        total += hours
        print(f"| {comment.lstrip('# ')} | {epochs} | {tokens:,} | {hours:.1f} |")
    print(f"\nAll {len(parse_recipes())} recipes: at most {total:.0f} GPU-hours on one {gpu['device']}.")


if __name__ == "__main__":
    main()
