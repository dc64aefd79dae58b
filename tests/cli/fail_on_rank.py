"""Run a train_*.py under `accelerate launch` with rank 1 unable to load its model (a node with a broken copy, say):
`accelerate launch ... tests/cli/fail_on_rank.py train_full.py --task ...`. Rank 1 fails first; the others wait for it
at the next collective until the launcher stops them."""

import runpy
import sys

from common import models
from common.errors import UsageError

load_model = models.load_model


def broken(*args, **kwargs):
    import os

    if os.environ.get("RANK") == "1":
        raise UsageError("rank 1 cannot load its model (a test)")
    return load_model(*args, **kwargs)


models.load_model = broken
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
