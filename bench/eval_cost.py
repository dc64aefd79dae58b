"""Where an evaluation's time goes, per batch, on one process: each script's model as its defaults build it, the same
dev rows; for IDPG also the encoder's share (IDPG.represent) and the backbone's with the prompt.

    python bench/eval_cost.py --model_name_or_path $SMOLLM2_DIR --data_dir ../shared/glue --task sst2   # seconds
"""

import argparse
import importlib
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def prepared(script, flags):
    """(accelerator, task, model, {split: eval loader}) of `script` (a module name) built as its flags ask, prepared."""
    from common import data, loop, models

    module = importlib.import_module(script)
    args = module.parse_args([*flags, "--output_dir", "unused"])
    accelerator = loop.make_accelerator(args.output_dir, None, 1800, False, None, False)
    task, splits, tokenizer, model, *_ = module.build(args, accelerator)
    _, loaders = data.make_dataloaders(
        accelerator, tokenizer, splits, task=task, position_ids=models.takes_position_ids(model),
        max_length=args.max_length, per_device_eval_batch_size=args.per_device_eval_batch_size, seed=args.seed,
    )  # fmt: skip
    model, *ready = accelerator.prepare(model, *loaders.values())
    return accelerator, task, model, dict(zip(loaders, ready))


def timed(script, flags, batches):
    """Seconds per eval batch of `script` built with `flags` (one warm-up batch first), and IDPG's encoder share."""
    import torch

    from common import evaluation

    accelerator, task, model, loaders = prepared(script, flags)
    inner = accelerator.unwrap_model(model)
    encoder = {"seconds": 0.0}
    if hasattr(inner, "represent"):  # IDPG: time the encoder's part
        represent = inner.represent

        def clocked(*a, **k):
            started = time.perf_counter()
            out = represent(*a, **k)
            encoder["seconds"] += time.perf_counter() - started
            return out

        inner.represent = clocked
    with torch.no_grad():
        evaluation.preflight(model, loaders, accelerator, task, batches=1)  # warm-up
        encoder["seconds"] = 0.0
        started = time.perf_counter()
        evaluation.preflight(model, loaders, accelerator, task, batches=batches)
    seconds = (time.perf_counter() - started) / batches
    return seconds, encoder["seconds"] / batches


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model_name_or_path", required=True)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--task", default="sst2")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_length", type=int, default=128)
    p.add_argument("--scripts", nargs="+", default=["train_lora", "train_prompt", "train_idpg"])
    a = p.parse_args()
    flags = ["--task", a.task, "--model_name_or_path", a.model_name_or_path, "--data_dir", a.data_dir]
    flags += ["--max_train_samples", "32", "--max_eval_samples", str(a.batch_size * (a.batches + 1))]
    flags += ["--per_device_eval_batch_size", str(a.batch_size), "--max_length", str(a.max_length)]
    for script in a.scripts:
        seconds, encoder = timed(script, flags, a.batches)
        share = f", of which the encoder {encoder:.2f} s" if encoder else ""
        print(f"{script}: {seconds:.2f} s per batch of {a.batch_size} rows{share}")


if __name__ == "__main__":
    main()
