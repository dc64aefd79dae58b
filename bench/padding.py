"""How much of a batch is padding, counted (not timed): MNLI dev_matched (the longest pairs here).

    python bench/padding.py     # batches of 8, --max_length 128, SmolLM2's tokenizer (bench/smollm2.py)

Random batches (the default sampler) against --group_by_length (common.data.LengthGroupedSampler),
one epoch each, with the scripts' own loading and tokenizing; also checks that the grouped epoch
holds every row exactly once. Writes bench/results/padding.json.
"""

import os
import sys

import torch
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from common.data import LengthGroupedSampler, read_tsv, tokenize  # noqa: E402
from common.outputs import atomic_write_json  # noqa: E402

BATCH, MAX_LENGTH = 8, 128


def pad_share(order, lengths, multiple=1):
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    padded = sum(len(b) * -(-max(lengths[j] for j in b) // multiple) * multiple for b in batches)
    return 1 - sum(lengths) / padded


def main():
    from bench.smollm2 import smollm2_dir

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    import datasets

    path = os.path.join(ROOT, "..", "shared", "glue", "MNLI", "dev_matched.tsv")
    data = datasets.Dataset.from_dict(read_tsv("mnli", path))
    lengths = [len(x) for x in tokenize(data, "mnli", tokenizer, MAX_LENGTH)["input_ids"]]
    grouped = list(LengthGroupedSampler(lengths, BATCH, seed=0))
    assert sorted(grouped) == list(range(len(lengths))), "an epoch must hold every row exactly once"
    shuffled = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0)).tolist()
    result = {
        "rows": len(lengths),
        "batch": BATCH,
        "max_length": MAX_LENGTH,
        "tokenizer": "SmolLM2-135M",
        "pad_share": {
            "random": pad_share(shuffled, lengths),
            "group_by_length": pad_share(grouped, lengths),
            "random, multiple of 8": pad_share(shuffled, lengths, 8),
            "group_by_length, multiple of 8": pad_share(grouped, lengths, 8),
        },
    }
    for name, share in result["pad_share"].items():
        print(f"{name:32s} {share:.1%} of the batch tokens are padding")
    atomic_write_json(os.path.join(ROOT, "bench", "results", "padding.json"), result)


if __name__ == "__main__":
    main()
