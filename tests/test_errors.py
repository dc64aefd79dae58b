"""Bad input: a one-line error that names the fix, a non-zero exit, no traceback."""
import os
import shutil

import pytest

from launch_utils import launch


def run_bad(args, tmp_path, **env):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        proc = launch("train_full.py", "single", args, timeout=300)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture
def base(tiny_gpt2, glue_dir, tmp_path):
    return ["--model_name_or_path", tiny_gpt2, "--data_dir", glue_dir, "--output_dir", str(tmp_path / "out")]


def test_unknown_task(base, tmp_path):
    assert "choose one of: cola, sst2" in run_bad(["--task", "sst3", *base], tmp_path)


def test_data_dir_without_the_task(base, tmp_path, tiny_gpt2):
    (tmp_path / "empty").mkdir()
    msg = run_bad(["--task", "rte", *base, "--data_dir", str(tmp_path / "empty")], tmp_path)
    assert "RTE/train.tsv" in msg and "--data_dir" in msg


def test_model_offline_fails_fast_and_names_the_flag(glue_dir, tmp_path):
    msg = run_bad(["--task", "rte", "--data_dir", glue_dir, "--output_dir", str(tmp_path / "o"),
                   "--model_name_or_path", "gpt2-not-cached"], tmp_path,
                  HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert "cannot load model 'gpt2-not-cached'" in msg and "HF_HUB_OFFLINE" in msg


def test_tokenizer_without_pad_or_eos(glue_dir, tiny_gpt2, tmp_path):
    import json

    model_dir = tmp_path / "nopad"
    shutil.copytree(tiny_gpt2, model_dir)
    cfg = json.load(open(model_dir / "tokenizer_config.json"))
    for key in ("eos_token", "bos_token", "unk_token", "pad_token"):
        cfg[key] = None
    json.dump(cfg, open(model_dir / "tokenizer_config.json", "w"))
    msg = run_bad(["--task", "rte", "--data_dir", glue_dir, "--output_dir", str(tmp_path / "o"),
                   "--model_name_or_path", str(model_dir)], tmp_path)
    assert "neither a pad nor an eos token" in msg


@pytest.mark.parametrize("flags,expect", [
    (["--max_length", "4"], "--max_length 4 is too short"),
    (["--learning_rate=-1e-4"], "--learning_rate must be positive"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1"),
    (["--checkpointing_steps", "often"], "--checkpointing_steps takes"),
    (["--resume_from_checkpoint", "/nonexistent/step_3"], "no checkpoint at"),
])
def test_bad_flag_values(base, tmp_path, flags, expect):
    assert expect in run_bad(["--task", "rte", *base, "--max_train_samples", "8", *flags], tmp_path)


def test_output_dir_of_another_run_is_refused(base, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")
    assert "--overwrite_output_dir" in run_bad(["--task", "rte", *base], tmp_path)
