"""An environment like the GPU machine's image, on this CPU: torch (the CPU build), transformers
5.17, accelerate, peft, tqdm, scipy and scikit-learn (and the image's pandas, pyarrow, xxhash,
aiohttp and matplotlib, which datasets and the report need), and not datasets, deepspeed or gguf. It is
built once, in .cache/gpuvenv; tests/bench/test_gpu_plan.py runs bench/gpu_grid.sh's two calls
in it (SMOKE=1: on the CPU, a tiny budget) to prove the plan before a GPU is lent."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".cache", "gpuvenv")
# torch as installed here (its CPU build); the rest as the image has them.
PINS = [
    "torch==2.13.0",
    "transformers==5.17.0",
    "accelerate",
    "peft",
    "tqdm",
    "scipy",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "xxhash",
    "aiohttp",
    "matplotlib",
]
ABSENT = ["datasets", "deepspeed", "gguf"]


def python():
    """The environment's python, built first if it is missing or has other pins."""
    exe = os.path.join(VENV, "bin", "python")
    stamp = os.path.join(VENV, "pins.txt")
    if not (os.path.exists(stamp) and open(stamp).read() == " ".join(PINS)):
        subprocess.run([sys.executable, "-m", "venv", "--clear", VENV], check=True)
        subprocess.run([exe, "-m", "pip", "install", "-q", PINS[0]], check=True)  # first: the CPU wheel
        subprocess.run([exe, "-m", "pip", "install", "-q", *PINS[1:]], check=True)
        with open(stamp, "w") as f:
            f.write(" ".join(PINS))
    return exe


if __name__ == "__main__":
    print(python())
