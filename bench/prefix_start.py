"""Why prefix tuning starts from a text on Llama-style models: attention at the start, measured.

    python bench/prefix_start.py          # SmolLM2-135M (bench/smollm2.py), 32 SST-2 sentences, ~1 minute

For each start (no prefix, peft's random prefix, --prefix_init text) it prints, for the last token
of each sentence: the attention share of the first position (the model's own first token, or the
prefix's first pair) and of the whole prefix in a few layers, and how much the final states differ
between sentences (mean distance to their mean over mean norm): what the classifier can tell apart.
"""

import csv
import os
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DynamicCache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from train_prefix import PrefixTuning, parse_args, prefix_text_ids  # noqa: E402


def measure(model, tok, texts, kv, layers):
    """Per sentence: last-token states and attention, read after the pairs `kv` (or none)."""
    states, first, prefix = [], [], []
    p = 0 if kv is None else kv.shape[3]
    for text in texts:
        ids = tok(text, return_tensors="pt").input_ids
        extra = {} if kv is None else {"past_key_values": DynamicCache([(k[None], v[None]) for k, v in kv])}
        with torch.no_grad():
            out = model.model(
                input_ids=ids,
                attention_mask=torch.ones(1, p + ids.shape[1], dtype=torch.long),
                position_ids=torch.arange(ids.shape[1])[None] + p,
                output_attentions=True,
                **extra,
            )
        states.append(out.last_hidden_state[0, -1])
        first.append([out.attentions[i][0, :, -1, 0].mean().item() for i in layers])
        prefix.append([out.attentions[i][0, :, -1, :p].sum(-1).mean().item() for i in layers])
    h = torch.stack(states)
    spread = ((h - h.mean(0)).norm(dim=1).mean() / h.norm(dim=1).mean()).item()
    return torch.tensor(first).mean(0), torch.tensor(prefix).mean(0), spread


def main():
    from bench.smollm2 import smollm2_dir

    path = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, attn_implementation="eager")
    model.eval()
    data = os.path.join(ROOT, "..", "shared", "glue", "SST-2", "train.tsv")
    texts = [row[0] for row in list(csv.reader(open(data), delimiter="\t", quoting=csv.QUOTE_NONE))[1:33]]
    n = model.config.num_hidden_layers
    layers = [0, n // 6, n // 2, n - 1]
    torch.manual_seed(0)
    random = PrefixTuning(model, 10).eval()
    text = PrefixTuning(model, 10, text_ids=prefix_text_ids(tok, parse_args(["--task", "sst2"]).prefix_init_text, 10))
    print(f"layers {layers}: attention share of the last token on the first position | on the prefix; spread")
    for name, kv in (
        ("no prefix", None),
        ("random (peft)", random.prefix()),
        ("text (default)", text.eval().prefix()),
    ):
        first, prefix, spread = measure(model, tok, texts, None if kv is None else kv.detach(), layers)
        print(
            f"{name:15s} first {[round(x, 2) for x in first.tolist()]} | prefix "
            f"{[round(x, 2) for x in prefix.tolist()]}; spread {spread:.2f}"
        )


if __name__ == "__main__":
    main()
