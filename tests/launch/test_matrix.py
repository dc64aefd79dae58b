"""The method x config table (bench/support.py) cannot drift: every cell runs here (marked slow;
CI runs it) and must have the outcome that bench/results/support.json records, and
docs/distributed.md must show the table that file renders."""

import json
import os
import subprocess

import pytest

from bench.support import COLUMNS, RESULTS, ROWS, run_cell, table, why_failed
from tests.helpers import ROOT, check_same_run

CELLS = [(row, config) for row in ROWS for config in COLUMNS]
# The FSDP2 cells run in tests/launch/test_fsdp.py, which resumes and reloads them too.
RUN_HERE = [(row, config) for row, config in CELLS if not config.startswith("fsdp")]


def recorded():
    with open(RESULTS) as f:
        return json.load(f)["cells"]


def test_the_readme_shows_the_recorded_table():
    assert set(recorded()) == {f"{row}/{config}" for row, config in CELLS}, "run python bench/support.py"
    with open(os.path.join(ROOT, "docs", "distributed.md")) as f:
        assert table(recorded()) in f.read(), "run python bench/report.py"


ELASTIC = """100%|##########| 4/4 [00:00<00:00,  8.47it/s, loss=0.6939]
terminate called without an active exception
E1127 18:33:12.330000 25526 api.py:1002] failed (exitcode: -6) local_rank: 0 (pid: 25529) of binary: python
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
Failures:
[1]:
  rank      : 1 (local_rank: 1)
  exitcode  : -15 (pid: 25530)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 25530
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : -6 (pid: 25529)  (SIGABRT)
  error_file: <N/A>
  traceback : Signal 6 (SIGABRT) received by PID 25529
"""


@pytest.mark.parametrize(
    "stderr,expected",
    [
        (ELASTIC, "terminate called without an active exception; exitcode : -6 (pid: 25529) (SIGABRT)"),
        (
            "Traceback (most recent call last):\n  File x\nValueError: bad shape\n" + ELASTIC.split("\n", 2)[2],
            "ValueError: bad shape; exitcode : -6 (pid: 25529) (SIGABRT)",
        ),
        (
            "error: --num_prefix must be >= 1 and --prefix_learning_rate > 0\n",
            "error: --num_prefix must be >= 1 and --prefix_learning_rate > 0",
        ),
        ("", "exit 2: "),
    ],
)
def test_a_failed_cell_says_why(stderr, expected):
    assert why_failed(subprocess.CompletedProcess([], 2, "", stderr)) == expected


# Under these a cell of every script also resumes from its middle checkpoint into a first event that is an evaluation
# (ZeRO-3 once failed there: its parameter-fetch trace, recorded after a resume, missed the LoRA pairs); FSDP2's
# resume is in tests/launch/test_fsdp.py.
RESUMED = {"ddp", "zero2", "zero3"}
ONE_ROW_A_SCRIPT = {"full", "lora", "prefix", "houlsby", "prompt", "idpg"}


@pytest.mark.slow
@pytest.mark.parametrize("row,config", RUN_HERE)
def test_cell_has_its_recorded_outcome(row, config, tiny_gpt2, glue_dir, tmp_path):
    resumes = config in RESUMED and row in ONE_ROW_A_SCRIPT
    saving = ["--checkpointing_steps", "2", "--eval_steps", "3"] if resumes else []
    outcome = run_cell(row, config, tiny_gpt2, glue_dir, str(tmp_path / "out"), saving)
    assert outcome["ok"] == recorded()[f"{row}/{config}"]["ok"], (
        f"{row}/{config} now gives {outcome}; fix it, or rerun python bench/support.py --cells {row}/{config}"
    )
    if resumes:  # 4 steps: resumed at 2, it trains step 3 and evaluates first, then goes on to the end
        middle = ["--resume_from_checkpoint", str(tmp_path / "out" / "checkpoints" / "step_2")]
        again = run_cell(row, config, tiny_gpt2, glue_dir, str(tmp_path / "resumed"), [*saving, *middle])
        assert again == outcome, again
        check_same_run(tmp_path / "out", tmp_path / "resumed")
