"""The run's bookkeeping (common/loop.py, common/results.py): the original experiments' protocol (a validation set held
out of train or half of dev, model selection and early stopping on it, the test set scored with the
chosen weights, --adam_epsilon), the token counts in results.json, --torch_compile."""

import os
import re

import pytest
import torch
from safetensors.torch import load_file

from common.data import HELD_OUT, load_data, make_dataloaders
from common.errors import UsageError
from common.loop import make_accelerator
from tests.helpers import evaluations, results, run_in_process, saved_eval_logits


def run_args(tiny_gpt2, glue_dir, out, *extra, task="sst2"):
    return [
        "--task",
        task,
        "--model_name_or_path",
        tiny_gpt2,
        "--data_dir",
        glue_dir,
        "--output_dir",
        out,
        "--per_device_train_batch_size",
        "8",
        "--learning_rate",
        "2e-3",
        *extra,
    ]


def loaders(tiny_gpt2, glue_dir, tmp_path, *flags, task="sst2"):
    """The loaders train_full.py would build with these flags."""
    from accelerate.state import AcceleratorState
    from transformers import AutoTokenizer

    import train_full

    AcceleratorState._reset_state(reset_partial_state=True)
    args = train_full.parse_args(run_args(tiny_gpt2, glue_dir, str(tmp_path / "out"), *flags, task=task))
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    tokenizer.pad_token = tokenizer.eos_token
    accelerator = make_accelerator(args.output_dir)
    task, splits = load_data(
        accelerator,
        args.task,
        data_dir=args.data_dir,
        max_train_samples=args.max_train_samples,
        max_eval_samples=args.max_eval_samples,
        validation_size=args.validation_size,
        validation_dev_half=args.validation_dev_half,
        seed=args.seed,
        do_predict=args.do_predict,
    )
    return make_dataloaders(
        accelerator,
        tokenizer,
        splits,
        task=task,
        max_length=args.max_length,
        per_device_train_batch_size=args.per_device_train_batch_size,
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        seed=args.seed,
        group_by_length=args.group_by_length,
        pad_to_multiple_of=args.pad_to_multiple_of,
        fixed_lengths=args.torch_compile,
        do_predict=args.do_predict,
    )


def test_held_out_rows_never_reach_a_training_batch(tiny_gpt2, glue_dir, tmp_path):
    train, evals = loaders(tiny_gpt2, glue_dir, tmp_path, "--validation_size", "20", "--seed", "3")
    held = set(evals[HELD_OUT].dataset["idx"])
    seen = set()
    for epoch in range(3):  # a new shuffle each time
        for batch in train:
            seen.update(batch["idx"].tolist())
    assert len(held) == 20 and not seen & held
    assert seen | held == set(range(96))  # every other row is trained on
    assert len(evals["validation"].dataset) == 32  # GLUE dev stays whole: it is the test set
    # Another seed holds out other rows.
    _, other = loaders(tiny_gpt2, glue_dir, tmp_path, "--validation_size", "20", "--seed", "4")
    assert set(other[HELD_OUT].dataset["idx"]) != held


def test_dev_halves_are_fixed_whatever_the_seed(tiny_gpt2, glue_dir, tmp_path):
    halves = []
    for seed in ("1", "2"):
        train, evals = loaders(tiny_gpt2, glue_dir, tmp_path, "--validation_dev_half", "--seed", seed, task="rte")
        assert len(train.dataset) == 32  # train is untouched
        halves.append((set(evals[HELD_OUT].dataset["idx"]), set(evals["validation"].dataset["idx"])))
    (validation, test), again = halves
    assert len(validation) == len(test) == 8 and not validation & test and validation | test == set(range(16))
    assert halves[1] == (validation, test)


def test_test_metrics_come_from_the_entry_chosen_on_validation(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    run_in_process(
        "train_full.py",
        run_args(tiny_gpt2, glue_dir, out, "--validation_size", "24", "--num_train_epochs", "3", "--eval_steps", "2"),
    )
    res = results(out)
    history = evaluations(res)
    assert all("val_accuracy" in h and "accuracy" in h for h in history)
    # the first of equal ones, as the run keeps it
    best = max(history, key=lambda h: h["val_accuracy"])
    assert res["best_metrics"]["step"] == best["step"]
    assert res["validation_metrics"] == {"accuracy": best["val_accuracy"]}
    assert res["test_metrics"] == {"accuracy": best["accuracy"]}
    # 72 rows: 9 steps an epoch
    assert res["stopped_early_at_step"] is None and history[-1]["step"] == 3 * 9


def early_stopping_args(tiny_gpt2, glue_dir, out, *extra):
    """A learning rate so small that the validation accuracy never moves: patience K stops the run
    at evaluation K + 1 (the first evaluation sets the best)."""
    return run_args(
        tiny_gpt2,
        glue_dir,
        out,
        "--validation_size",
        "24",
        "--learning_rate",
        "1e-12",
        "--num_train_epochs",
        "3",
        "--eval_steps",
        "1",
        "--early_stopping_patience",
        "3",
        *extra,
    )


def test_early_stopping_stops_and_resumes_with_its_count(tiny_gpt2, glue_dir, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_in_process("train_full.py", early_stopping_args(tiny_gpt2, glue_dir, whole, "--checkpointing_steps", "2"))
    res = results(whole)
    assert res["stopped_early_at_step"] == 4 and [h["step"] for h in evaluations(res)] == [1, 2, 3, 4]
    assert res["best_metrics"]["step"] == 1
    assert sorted(os.listdir(whole / "checkpoints")) == ["step_2", "step_4"]
    # The checkpoint at step 2 holds one evaluation without a gain: the resumed run stops at 4 too.
    run_in_process(
        "train_full.py",
        early_stopping_args(
            tiny_gpt2, glue_dir, resumed, "--resume_from_checkpoint", whole / "checkpoints" / "step_2"
        ),
    )
    again = results(resumed)
    assert again["stopped_early_at_step"] == 4 and again["log_history"] == res["log_history"]


def test_adam_epsilon_reaches_the_optimizer(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    run_in_process(
        "train_full.py",
        run_args(
            tiny_gpt2, glue_dir, out, "--max_train_steps", "2", "--checkpointing_steps", "1", "--adam_epsilon", "1e-6"
        ),
    )
    state = torch.load(out / "checkpoints" / "step_1" / "optimizer.bin", weights_only=False)
    assert {g["eps"] for g in state["param_groups"]} == {1e-6}


@pytest.mark.parametrize(
    "flags,expect",
    [
        (["--validation_size", "96"], "--validation_size 96 leaves nothing to train on: the training set has 96 rows"),
        (["--validation_size", "8", "--validation_dev_half"], "pass one of them"),
        (["--early_stopping_patience", "0"], "--early_stopping_patience must be at least 1"),
        (["--adam_epsilon", "0"], "--adam_epsilon must be positive"),
    ],
)
def test_bad_protocol_flags(tiny_gpt2, glue_dir, tmp_path, flags, expect):
    with pytest.raises(UsageError, match=re.escape(expect)):
        run_in_process("train_full.py", run_args(tiny_gpt2, glue_dir, tmp_path / "out", *flags))


def test_results_count_real_and_padded_tokens(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    run_in_process(
        "train_full.py",
        [
            "--task",
            "sst2",
            "--model_name_or_path",
            tiny_gpt2,
            "--data_dir",
            glue_dir,
            "--output_dir",
            out,
            "--max_train_samples",
            "32",
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "8",
            "--group_by_length",
            "--pad_to_multiple_of",
            "8",
        ],
    )
    res = results(out)
    assert 0 < res["train_tokens"] <= res["train_padded_tokens"]
    assert res["train_padded_tokens"] % 8 == 0 and res["train_tokens_per_s"] > 0
    assert res["train_tokens_per_s"] == pytest.approx(res["train_tokens"] / res["train_runtime_s"])


@pytest.mark.slow  # compiling takes a minute or two on CPU
@pytest.mark.parametrize("script,flags", [("train_full.py", []), ("train_lora.py", ["--lora_r", "4"])])
def test_torch_compile_gives_the_eager_logits(script, flags, tiny_gpt2, glue_dir, tmp_path):
    """At (nearly) the same weights: a learning rate of 1e-12 leaves them where they start, so the
    compiled and the eager run evaluate the same model (their dropout masks differ: inductor draws
    its own)."""
    for name, extra in (("eager", []), ("compiled", ["--torch_compile"])):
        run_in_process(
            script,
            [
                "--task",
                "sst2",
                "--model_name_or_path",
                tiny_gpt2,
                "--data_dir",
                glue_dir,
                "--output_dir",
                tmp_path / name,
                "--max_train_samples",
                "16",
                "--max_train_steps",
                "2",
                "--learning_rate",
                "1e-12",
                *flags,
                *extra,
            ],
        )
    torch.testing.assert_close(
        saved_eval_logits(tmp_path / "compiled", "sst2"),
        saved_eval_logits(tmp_path / "eager", "sst2"),
        atol=1e-5,
        rtol=0,
    )
    saved = [load_file(tmp_path / name / "trainable.safetensors") for name in ("eager", "compiled")]
    # the plain names, not the compiled module's _orig_mod.*
    assert saved[0].keys() == saved[1].keys()


def test_a_run_that_learns_nothing_says_so(tiny_gpt2, glue_dir, tmp_path):
    """At a learning rate of 1e-9 the accuracy stays the majority class's: a warning naming the rate to change (the
    weights did change, by an ulp here and there: no word of that; tests/cli/test_protections.py has a run whose
    weights never change); a run that learns has none."""
    runs = {}
    for name, rate in (("stuck", "1e-9"), ("learns", "2e-3")):
        run_in_process(
            "train_full.py",
            run_args(
                tiny_gpt2,
                glue_dir,
                tmp_path / name,
                "--num_train_epochs",
                "3",
                "--learning_rate",
                rate,
                "--logging_steps",
                "2",
            ),
        )
        runs[name] = results(tmp_path / name)
    small = "too few to tell this run from another"  # (32 dev rows: every run here says so too)
    stuck = [w for w in runs["stuck"]["warnings"] if small not in w]
    assert runs["stuck"]["majority_metrics"] == {"accuracy": 0.5}
    assert len(stuck) == 1 and all("--learning_rate 1e-09" in line for line in stuck), stuck
    assert "cannot be told from always predicting the majority class (0.5000)" in stuck[0]
    assert [w for w in runs["learns"]["warnings"] if small not in w] == [] and runs["learns"]["metrics"][
        "accuracy"
    ] > 0.6

    # The curve: an entry per logged step (the epoch as a fraction), an evaluation every epoch.
    history = runs["learns"]["log_history"]
    logged = [h for h in history if "loss" in h]
    assert [h["step"] for h in logged] == list(range(2, 37, 2))
    assert logged[0]["epoch"] == round(2 / 12, 4) and [h["epoch"] for h in evaluations(runs["learns"])] == [1, 2, 3]
    assert (tmp_path / "learns" / "curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("task", ["sst2", "mrpc", "stsb"])
def test_every_metric_carries_its_interval(task, tiny_gpt2, glue_dir, tmp_path, capsys):
    """results.json's intervals: a 95% bootstrap interval around each dev metric, shown in the final line; a dev set
    of 16 rows is too small to tell runs apart, and the run says so."""
    out = tmp_path / "out"
    run_in_process("train_full.py", run_args(tiny_gpt2, glue_dir, out, "--max_train_steps", "2", task=task))
    res = results(out)
    assert set(res["intervals"]) == set(res["metrics"])
    for name, bounds in res["intervals"].items():
        value = res["metrics"][name]
        if bounds is None:  # a bootstrap on 12 or 16 rows would look certain: none, and the run says why
            assert name != "accuracy" and any(
                "no 95% interval of " in w and name in w and "too few rows" in w for w in res["warnings"]
            )
            continue
        low, high = bounds
        assert value is None or low <= value <= high, (name, low, value, high)
    assert any("too few to tell this run from another" in w or "no 95% interval" in w for w in res["warnings"])
    assert "(95% intervals)" in capsys.readouterr().out
