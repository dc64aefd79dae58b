"""bench/speed.py's memory measure on a one-layer GPT-2: what autograd keeps from a forward, weights left out.
DoRA's claim (docs/methods.md): backward keeps one activation a layer more than LoRA (z = W x + s B A x), and at
least one fewer than peft's DoRA, whose (k - 1) W x + k s B A x keeps W x and B A x."""

import json
import subprocess
import sys

from tests.helpers import ROOT

BATCH, SEQ, WIDTH = 2, 16, 3 * 768  # c_attn's output: [q | k | v]


def test_dora_keeps_one_activation_more_than_lora_and_fewer_than_peft(tmp_path):
    out = tmp_path / "speed.json"
    shape = ["--layers", "1", "--batch", str(BATCH), "--seq", str(SEQ), "--steps", "1", "--warmup", "0"]
    cmd = [sys.executable, "bench/speed.py", "--configs", "lora_fused,dora_fused,peft_dora", *shape, "--rounds", "1"]
    proc = subprocess.run([*cmd, "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = {name: c["saved_mib"] * 2**20 for name, c in json.load(open(out))["configs"].items()}
    activation = BATCH * SEQ * WIDTH * 4  # one fp32 [batch, seq, 3 d] tensor
    extra = saved["dora_fused"] - saved["lora_fused"]
    assert activation <= extra <= activation + 4 * WIDTH * 4, saved  # z, and k and the norm ([3 d] each)
    assert saved["peft_dora"] - saved["dora_fused"] >= activation, saved


def test_the_docs_show_every_speed_table():
    """Each results file's table, as bench/report.py renders it (the saved-for-backward column where measured)."""
    import os

    from bench import report

    with open(os.path.join(ROOT, "docs", "benchmarks.md")) as f:
        text = f.read()
    for name in ("speed.json", "speed-gc.json", "speed-lora-variants.json"):
        assert report.speed_table(os.path.join(ROOT, "bench", "results", name)) in text, "run python bench/report.py"
    variants = report.speed_table(os.path.join(ROOT, "bench", "results", "speed-lora-variants.json"))
    assert "| saved for backward ratio |" in variants.splitlines()[2]
