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
    from bench.eval_cost import prepared
    from common import evaluation

    accelerator, task, model, eval_loaders = prepared("train_lora", sys.argv[1:])
    rows = sum(len(loader.dataset) for loader in eval_loaders.values())
    for name, run in (("pre-flight", evaluation.preflight), ("evaluation", evaluation.evaluate)):
        started = time.perf_counter()
        run(model, eval_loaders, accelerator, task)
        print(f"{name}: {time.perf_counter() - started:.2f} s ({rows} eval rows)")


if __name__ == "__main__":
    main()
