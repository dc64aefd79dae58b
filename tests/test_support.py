"""The README's method x config table (bench/support.py) cannot drift: every cell runs here (marked
slow; CI runs it) and must have the outcome that bench/results/support.json records, and the README
must show the table that file renders."""
import json
import os
import sys

import pytest

from launch_utils import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
from support import COLUMNS, RESULTS, ROWS, run_cell, table  # noqa: E402

CELLS = [(row, config) for row in ROWS for config in COLUMNS]


def recorded():
    with open(RESULTS) as f:
        return json.load(f)["cells"]


def test_the_readme_shows_the_recorded_table():
    assert set(recorded()) == {f"{row}/{config}" for row, config in CELLS}, "run python bench/support.py"
    with open(os.path.join(ROOT, "README.md")) as f:
        assert table(recorded()) in f.read(), "run python bench/report.py"


@pytest.mark.slow
@pytest.mark.parametrize("row,config", CELLS)
def test_cell_has_its_recorded_outcome(row, config, tiny_gpt2, glue_dir, tmp_path):
    outcome = run_cell(row, config, tiny_gpt2, glue_dir, str(tmp_path / "out"))
    assert outcome["ok"] == recorded()[f"{row}/{config}"]["ok"], (
        f"{row}/{config} now gives {outcome}; fix it, or rerun python bench/support.py --cells {row}/{config}")
