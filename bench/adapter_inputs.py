"""What each adapter reads on a real decoder: the RMS and the largest entry of its input, and the
RMS of its output at the start, for Houlsby and for Pfeiffer with and without --ln_before.

    python bench/adapter_inputs.py     # SmolLM2-135M (bench/smollm2.py), 16 SST-2 sentences, ~1 minute

Pfeiffer on a pre-LN model reads the residual stream itself, which no layer normalizes; Houlsby's
adapters read the sublayers' outputs.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def measure(folder, texts, variant, ln_before):
    """{adapter name: (input RMS, input max |entry|, output RMS)} on `texts`, at the start."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from common.models import freeze_backbone
    from train_adapter import Bottleneck, add_adapters

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    freeze_backbone(model)
    add_adapters(model, variant, model.config.hidden_size // 16, ln_before=ln_before)
    seen = {}

    def record(name):
        def hook(module, args, out):
            h = args[0]
            seen[name] = (h.pow(2).mean().sqrt().item(), h.abs().max().item(), out.pow(2).mean().sqrt().item())

        return hook

    for name, module in model.named_modules():
        if isinstance(module, Bottleneck):
            module.register_forward_hook(record(name))
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        model(**batch)
    return seen


def main():
    from bench.smollm2 import smollm2_dir
    from common.data import read_tsv

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "glue"))
    args = p.parse_args()
    texts = read_tsv("sst2", os.path.join(args.data_dir, "SST-2", "train.tsv"))["sentence"][:16]
    folder = smollm2_dir()
    for variant, ln_before in (("houlsby", False), ("pfeiffer", False), ("pfeiffer", True)):
        seen = measure(folder, texts, variant, ln_before)
        rms = [v[0] for v in seen.values()]
        large = sum(r > 10 for r in rms)
        print(
            f"{variant}, ln_before {ln_before}: {len(seen)} adapters, {large} reading an input of "
            f"RMS over 10; input RMS {min(rms):.2f} to "
            f"{max(rms):.2f}, largest entry {max(v[1] for v in seen.values()):,.0f}; output RMS "
            f"{min(v[2] for v in seen.values()):.4f} to {max(v[2] for v in seen.values()):.4f}"
        )
        for name in list(seen)[:: max(1, len(seen) // 5)]:
            rms_in, top, rms_out = seen[name]
            print(f"  {name:48s} in: RMS {rms_in:8.2f}, max {top:9.1f}; out: RMS {rms_out:.4f}")


if __name__ == "__main__":
    main()
