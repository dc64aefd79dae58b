"""Checkpoint rotation (--checkpoints_total_limit) and the pre-flight evaluation, through the scripts: the oldest
checkpoints go only after a newer one is complete, never the one a run resumed from, and a run resumed after a
rotation ends bit for bit as the run it resumed; a broken evaluation fails before step 1."""

import os

import pytest

from bench.support import run_cell
from common.outputs import steps
from tests.helpers import args_for, check_same_run, cli, results, run_in_process


def names(out):
    return sorted(os.path.basename(p) for p in steps(out))


def test_rotation_keeps_the_newest_and_the_one_a_resume_started_from(tiny_gpt2, glue_dir, tmp_path):
    out = str(tmp_path / "out")
    flags = {"checkpointing_steps": 1, "checkpoints_total_limit": 2, "lora_r": 4, "num_train_epochs": 1}  # 4 steps
    run_in_process("train_lora.py", args_for(tiny_gpt2, glue_dir, out, **flags))
    assert names(out) == ["step_3", "step_4"]  # every step saved, the two newest kept
    first = results(out)
    # Resumed from step_3 with a limit of 1: step_4 is written anew; step_3, where it started, stays.
    flags.update(checkpoints_total_limit=1, resume_from_checkpoint=f"{out}/checkpoints/step_3")
    run_in_process("train_lora.py", args_for(tiny_gpt2, glue_dir, out, **flags))
    assert names(out) == ["step_3", "step_4"]
    assert results(out)["log_history"] == first["log_history"]
    # A later resume with `latest` finds the newest complete checkpoint: the run has no step left.
    flags.update(resume_from_checkpoint="latest")
    run_in_process("train_lora.py", args_for(tiny_gpt2, glue_dir, out, **flags))
    assert names(out) == ["step_3", "step_4"] and results(out)["metrics"] == first["metrics"]


def test_a_limit_below_1_is_refused(tiny_gpt2, glue_dir, tmp_path):
    code, stderr = cli("train_lora.py", args_for(tiny_gpt2, glue_dir, tmp_path / "o", checkpoints_total_limit=0))
    assert code == 2 and "--checkpoints_total_limit" in stderr, stderr


def test_a_broken_evaluation_fails_before_step_1(tiny_gpt2, glue_dir, tmp_path, monkeypatch):
    """The pre-flight evaluation runs the metric on two batches of every eval split before training: a metric that
    fails does so before any step is trained or saved (here: after the last step, 4 steps later)."""
    from common import evaluation

    def broken(*args, **kwargs):
        raise RuntimeError("the metric broke")

    monkeypatch.setattr(evaluation, "glue_metrics", broken)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="the metric broke"):
        run_in_process("train_lora.py", args_for(tiny_gpt2, glue_dir, str(out), checkpointing_steps=1, lora_r=4))
    assert not steps(out) and not (out / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("config", ["ddp", "zero3", "fsdp"])
def test_a_resume_after_rotation_ends_bit_for_bit(config, tiny_gpt2, glue_dir, tmp_path):
    """2 processes: a run that saves every step and keeps 2 leaves step_3 and step_4; a run resumed from its step_3
    (evaluating at step 3, then training step 4) ends bit for bit as it, and keeps only its own newest."""
    whole, resumed = str(tmp_path / "whole"), str(tmp_path / "resumed")
    saving = ["--checkpointing_steps", "1", "--checkpoints_total_limit", "2", "--eval_steps", "3"]
    outcome = run_cell("lora", config, tiny_gpt2, glue_dir, whole, saving)
    assert outcome["ok"] and outcome["steps"] == 4, outcome
    assert names(whole) == ["step_3", "step_4"]
    limit_1 = [*saving[:-3], "1", *saving[-2:], "--resume_from_checkpoint", f"{whole}/checkpoints/step_3"]
    assert run_cell("lora", config, tiny_gpt2, glue_dir, resumed, limit_1) == outcome
    assert names(resumed) == ["step_4"]
    check_same_run(whole, resumed)
