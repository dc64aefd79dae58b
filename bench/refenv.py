"""The reference libraries that cannot live beside our transformers 5.x: AdapterHub `adapters` 1.3
pins transformers 4.57, and peft's prefix tuning needs it too. They get their own virtual
environment (.cache/refvenv, reusing this torch), built once on first use; the programs that run
there (bench/reference_train.py, tests/reference/*.py) get the repository on PYTHONPATH."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".cache", "refvenv")
PINS = ["adapters==1.3.0", "transformers==4.57.6", "peft==0.17.1"]


def python():
    """The reference environment's python, built first if it is missing or has other pins."""
    exe = os.path.join(VENV, "bin", "python")
    stamp = os.path.join(VENV, "pins.txt")
    if not (os.path.exists(stamp) and open(stamp).read() == " ".join(PINS)):
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--clear", VENV], check=True)
        subprocess.run([exe, "-m", "pip", "install", "-q", *PINS], check=True)
        with open(stamp, "w") as f:
            f.write(" ".join(PINS))
    return exe


def env():
    """The environment its programs run in: offline, the repository importable."""
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)
