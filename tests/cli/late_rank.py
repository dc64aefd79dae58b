"""Run a train_*.py under `accelerate launch` with rank 1 10 seconds late to its first evaluation (a rank stuck in a
long save, say): `accelerate launch ... tests/cli/late_rank.py train_full.py --task ... --ddp_timeout 3`. Rank 0 then
waits at the evaluation's first collective until --ddp_timeout ends it."""

import runpy
import sys
import time

from common import evaluation

evaluate = evaluation.evaluate


def late(model, loaders, accelerator, task):
    if accelerator.process_index == 1:
        time.sleep(10)
    return evaluate(model, loaders, accelerator, task)


evaluation.evaluate = late
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
