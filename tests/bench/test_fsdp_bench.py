"""bench/sharding.py (FSDP2 against ZeRO-3 on the CPU): it runs and measures both, and
docs/distributed.md shows the table its results file renders."""

import json
import os
import subprocess
import sys

import pytest

from bench import report
from tests.helpers import ROOT


def test_the_docs_show_the_recorded_ratios():
    with open(os.path.join(ROOT, "docs", "distributed.md")) as f:
        text = f.read()
    table = report.sharding_table(os.path.join(ROOT, "bench", "results", "sharding.json"))
    assert table in text, "run python bench/report.py"


@pytest.mark.slow
def test_the_benchmark_measures_both_configs(real_glue, tmp_path):
    out = tmp_path / "sharding.json"
    flags = ["--rounds", "1", "--steps", "2", "--layers", "2", "--methods", "lora"]
    proc = subprocess.run(
        [sys.executable, "bench/sharding.py", *flags, "--data_dir", str(real_glue), "--out", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = json.load(open(out))["rows"]
    assert row["method"] == "lora"
    for key in ("zero3_step_s", "fsdp_step_s", "zero3_peak_rss_mib", "fsdp_peak_rss_mib"):
        assert row[key] > 0, key
    assert row["step_time_ratio"] == row["fsdp_step_s"] / row["zero3_step_s"]
    assert "FSDP2 / ZeRO-3: step time x" in proc.stdout
