"""What a base model's fingerprint costs (common.checkpoint.model_fingerprint, part of a run's identity: a resume and
predict.py notice a model folder changed in place): a folder of `--gb` gigabytes of weights in 3 safetensors-sized
files, written once, fingerprinted cold (its pages dropped from the cache where the system lets us) and warm.

    python bench/fingerprint.py --gb 6      # prints the seconds
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main():
    from common.checkpoint import model_fingerprint

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=6.0)
    p.add_argument("--dir", default=None, help="where to write the folder (default: a temporary one)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        open(os.path.join(folder, "config.json"), "w").write('{"model_type": "llama"}\n')
        block = os.urandom(1 << 24)
        for i in range(3):
            with open(os.path.join(folder, f"model-{i + 1:05d}-of-00003.safetensors"), "wb") as f:
                for _ in range(int(args.gb * 1e9 / 3 / len(block))):
                    f.write(block)
        dropped = os.system("sync && echo 1 > /proc/sys/vm/drop_caches 2>/dev/null") == 0
        for label in ("cold" if dropped else "first", "warm"):
            started = time.perf_counter()
            model_fingerprint(folder)
            print(f"{args.gb:g} GB, {label}: {time.perf_counter() - started:.3f} s")


if __name__ == "__main__":
    main()
