"""The reference weights and logits the tests compare with: tests/reference/make_reference.py,
run in the reference environment (bench/refenv.py: adapters 1.3, transformers 4.57, peft 0.17)."""

import os
import subprocess

from bench.refenv import ROOT, env, python


def make_reference(out_dir):
    script = os.path.join(ROOT, "tests", "reference", "make_reference.py")
    proc = subprocess.run(
        [python(), script, str(out_dir)], capture_output=True, text=True, cwd=ROOT, timeout=600, env=env()
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out_dir
