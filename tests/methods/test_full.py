"""train_full.py: in this process (the loop's logic: steps, resume, predictions, tracking) and
through the command line people run, under every shipped launch config (single and ZeRO-3 in the
default suite, the others with -m slow)."""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from predict import load_trainable
from tests.helpers import (
    CONFIGS,
    WORLD,
    check_load_trained,
    check_ok,
    eval_batches,
    evaluations,
    launch,
    logits_of,
    matrix,
    results,
    run_in_process,
    saved_eval_logits,
)

# all of the SST-2 fixture: 12 steps an epoch on one process
TRAIN, EVAL, BATCH, EPOCHS = (96, 32, 8, 3)


def args_for(tiny, glue, out, *extra):
    return [
        "--task",
        "sst2",
        "--model_name_or_path",
        tiny,
        "--data_dir",
        glue,
        "--output_dir",
        str(out),
        "--max_train_samples",
        str(TRAIN),
        "--max_eval_samples",
        str(EVAL),
        "--learning_rate",
        "2e-3",
        "--num_train_epochs",
        str(EPOCHS),
        "--per_device_train_batch_size",
        str(BATCH),
        "--eval_steps",
        "4",
        *extra,
    ]


def check_run(out, tiny_gpt2, glue_dir, world, atol):
    """What every run of train_full.py must leave: its results and weights that reproduce its logits."""
    res = results(out)
    assert res["method"] == "full" and res["task"] == "sst2"
    assert 0.0 <= res["metrics"]["accuracy"] <= 1.0 and "accuracy" in res["best_metrics"]
    # Every process really took part: the steps are those of one global batch of BATCH x world.
    assert evaluations(res)[-1]["step"] == EPOCHS * math.ceil(math.ceil(TRAIN / BATCH) / world)
    losses = [h["train_loss"] for h in evaluations(res)]
    assert losses[-1] < losses[0], losses
    assert json.load(open(out / "args.json"))["task"] == "sst2"

    # The saved weights, loaded into a plain model, reproduce the run's own eval logits.
    saved = load_file(out / "trainable.safetensors")
    model = AutoModelForSequenceClassification.from_pretrained(tiny_gpt2, num_labels=2).eval()
    model.config.pad_token_id = 0
    assert set(saved) == {n for n, _ in model.named_parameters()}
    assert res["trainable_params"] == res["total_params"] == sum(p.numel() for p in model.parameters())
    load_trainable(model, out / "trainable.safetensors")
    ours = logits_of(model, eval_batches(tiny_gpt2, glue_dir, "sst2", EVAL))
    torch.testing.assert_close(ours, saved_eval_logits(out, "sst2"), atol=atol, rtol=0)
    check_load_trained(out, tiny_gpt2, glue_dir, atol)


def test_train_full_in_process(tiny_gpt2, glue_dir, tmp_path):
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, tmp_path / "out"))
    check_run(tmp_path / "out", tiny_gpt2, glue_dir, world=1, atol=1e-5)


@pytest.mark.parametrize("config", matrix(CONFIGS))
def test_train_full_under_every_config(config, tiny_gpt2, glue_dir, tmp_path):
    proc = launch("train_full.py", config, args_for(tiny_gpt2, glue_dir, tmp_path / "out"))
    check_ok(proc)
    assert "final sst2 full: accuracy" in proc.stdout
    check_run(tmp_path / "out", tiny_gpt2, glue_dir, WORLD[config], atol=5e-2 if "16" in config else 1e-5)


def test_resume_equals_uninterrupted(tiny_gpt2, glue_dir, tmp_path, capsys):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, whole, "--checkpointing_steps", "10"))
    assert sorted(os.listdir(whole / "checkpoints")) == ["step_10", "step_20", "step_30"]
    # Resume mid-epoch (12 steps per epoch) from the uninterrupted run's checkpoint at step 20.
    capsys.readouterr()
    run_in_process(
        "train_full.py",
        args_for(tiny_gpt2, glue_dir, resumed, "--resume_from_checkpoint", whole / "checkpoints" / "step_20"),
    )
    assert "resumed from" in capsys.readouterr().out
    a, b = results(whole), results(resumed)
    assert a["metrics"] == b["metrics"] and a["best_metrics"] == b["best_metrics"]
    assert a["log_history"] == b["log_history"]
    wa, wb = (load_file(whole / "trainable.safetensors"), load_file(resumed / "trainable.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # 'latest' finds the newest checkpoint in the output dir.
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, whole, "--resume_from_checkpoint", "latest"))
    assert "step_30 at step 30" in capsys.readouterr().out and results(whole)["metrics"] == a["metrics"]


def test_do_predict_and_tracking(tiny_gpt2, glue_dir, tmp_path):
    """GLUE submission file for a test split, and tensorboard logs with --with_tracking."""
    import shutil

    data = tmp_path / "glue"
    shutil.copytree(os.path.join(glue_dir, "RTE"), data / "RTE")
    dev = (data / "RTE" / "dev.tsv").read_text().splitlines()
    (data / "RTE" / "test.tsv").write_text("\n".join(line.rsplit("\t", 1)[0] for line in dev[:13]) + "\n")
    out = tmp_path / "out"
    run_in_process(
        "train_full.py",
        [
            "--task",
            "rte",
            "--model_name_or_path",
            tiny_gpt2,
            "--data_dir",
            data,
            "--output_dir",
            out,
            "--max_train_samples",
            "16",
            "--max_eval_samples",
            "16",
            "--max_train_steps",
            "2",
            "--do_predict",
            "--with_tracking",
        ],
    )
    rows = (out / "predictions" / "RTE.tsv").read_text().splitlines()
    assert rows[0] == "index\tprediction" and len(rows) == 13
    assert [r.split("\t")[0] for r in rows[1:]] == [str(i) for i in range(12)]
    assert {r.split("\t")[1] for r in rows[1:]} <= {"entailment", "not_entailment"}
    assert any(f.startswith("events.out.tfevents") for _, _, files in os.walk(out) for f in files)
