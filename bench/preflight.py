"""What the pre-flight evaluation costs (common.evaluation.preflight: two batches of every eval split through the model
and the metric before step 1), beside a whole evaluation of the same splits, on one process with LoRA's model.

    python bench/preflight.py --model_name_or_path $SMOLLM2_DIR --task sst2 --data_dir ../shared/glue   # prints seconds
"""

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    from common import data, evaluation, loop, models
    from train_lora import build, parse_args

    args = parse_args([*sys.argv[1:], "--output_dir", "unused"])
    accelerator = loop.make_accelerator(args.output_dir, None, 1800, False, None, False)
    task, splits, tokenizer, model, _ = build(args, accelerator)
    _, eval_loaders = data.make_dataloaders(
        accelerator, tokenizer, splits, task=task, position_ids=models.takes_position_ids(model),
        max_length=args.max_length, per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size, seed=args.seed,
    )  # fmt: skip
    model, *loaders = accelerator.prepare(model, *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, loaders))
    rows = sum(len(loader.dataset) for loader in loaders)
    for name, run in (("pre-flight", evaluation.preflight), ("evaluation", evaluation.evaluate)):
        started = time.perf_counter()
        run(model, eval_loaders, accelerator, task)
        print(
            f"{name}: {time.perf_counter() - started:.2f} s ({rows} eval rows, batch {args.per_device_eval_batch_size})"
        )


if __name__ == "__main__":
    main()
