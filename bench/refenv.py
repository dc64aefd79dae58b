"""The reference libraries that cannot live beside our transformers 5.x: AdapterHub `adapters` 1.3
pins transformers 4.57, and peft's prefix tuning needs it too. They get their own virtual
environment (.cache/refvenv), built once on first use (`python -m pytest -m reference` runs the tests
that need it). It reuses the running torch, whatever environment runs it: the venv sees torch and the
packages torch needs, linked from where they are installed (a .pth file lists the links), and nothing
else, so pip installs the pins beside them, never a second torch (`python bench/refenv.py` prints its size). The programs that run there
(bench/reference_train.py, tests/reference/*.py) get the repository on PYTHONPATH."""

import importlib.metadata
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, ".cache", "refvenv")
PINS = ["adapters==1.3.0", "transformers==4.57.6", "peft==0.17.1"]


def python():
    """The reference environment's python, built first if it is missing or has other pins (or another torch)."""
    exe = os.path.join(VENV, "bin", "python")
    torch = importlib.metadata.distribution("torch")
    wanted = " ".join([*PINS, f"torch=={torch.version}"])
    stamp = os.path.join(VENV, "pins.txt")
    if not (os.path.exists(stamp) and open(stamp).read() == wanted):
        subprocess.run([sys.executable, "-m", "venv", "--clear", VENV], check=True)
        site = subprocess.run(
            [exe, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
        ).stdout.strip()
        link = os.path.join(VENV, "running-torch")  # torch and what it needs (sympy, ...), and nothing else
        os.makedirs(link)
        for dist in needed(torch):
            for top in {f.parts[0] for f in dist.files or [] if f.parts[0] not in ("..", "__pycache__")}:
                if not os.path.lexists(os.path.join(link, top)):
                    os.symlink(dist.locate_file(top), os.path.join(link, top))
        with open(os.path.join(site, "running-torch.pth"), "w") as f:
            f.write(link + "\n")
        subprocess.run([exe, "-m", "pip", "install", "-q", *PINS], check=True)
        with open(stamp, "w") as f:
            f.write(wanted)
    return exe


def needed(dist, seen=None):
    """`dist` and the installed distributions it requires, at any depth (no extras)."""
    import re

    seen = {} if seen is None else seen
    if dist.metadata["Name"].lower() not in seen:
        seen[dist.metadata["Name"].lower()] = dist
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue
            try:
                needed(importlib.metadata.distribution(re.split(r"[ ;<>=!~\[(]", requirement)[0]), seen)
            except importlib.metadata.PackageNotFoundError:
                pass  # (a requirement of another platform)
    return list(seen.values())


def env():
    """The environment its programs run in: offline, the repository importable."""
    return dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=ROOT)


def size():
    """The venv's size in MB, torch left out (it is the running one's, linked)."""
    total = 0
    for folder, dirs, files in os.walk(VENV):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        total += sum(
            os.path.getsize(os.path.join(folder, f)) for f in files if not os.path.islink(os.path.join(folder, f))
        )
    return total / 1e6


if __name__ == "__main__":
    python()
    print(f"{VENV}: {size():.0f} MB (torch reused from {importlib.metadata.distribution('torch').locate_file('')})")
