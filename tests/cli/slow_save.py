"""Run a train_*.py with rank 1's Accelerator.save_state started late, as on a slow file system:
`accelerate launch ... tests/cli/slow_save.py train_full.py --task ...`. Rank 0 then finishes its
part of every checkpoint first, deterministically."""

import runpy
import sys
import time

from accelerate import Accelerator

save_state = Accelerator.save_state


def late(self, *args, **kwargs):
    if self.process_index == 1:
        time.sleep(1.0)
    return save_state(self, *args, **kwargs)


Accelerator.save_state = late
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
