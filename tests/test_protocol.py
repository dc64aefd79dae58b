"""The original experiments' protocol: a validation set held out of train (or half of dev), model
selection and early stopping on it, the test set scored with the chosen weights; --adam_epsilon;
IDPG's --encoder_dropout; and recipes/seed_gpt2xl.sh, every command of which must keep running."""
import os
import re
import shutil
import sys

import pytest
import torch
from transformers import GPT2Config, GPT2Model

import tiny
from common.errors import UsageError
from common.launch import HELD_OUT, make_accelerator, make_dataloaders
from launch_utils import CONFIGS, ROOT, check_ok, launch, results, run_in_process
from train_idpg import build_idpg


def run_args(tiny_gpt2, glue_dir, out, *extra, task="sst2"):
    return ["--task", task, "--model_name_or_path", tiny_gpt2, "--data_dir", glue_dir, "--output_dir", out,
            "--per_device_train_batch_size", "8", "--learning_rate", "2e-3", *extra]


def loaders(tiny_gpt2, glue_dir, tmp_path, *flags, task="sst2"):
    """The loaders train_full.py would build with these flags."""
    from accelerate.state import AcceleratorState
    from transformers import AutoTokenizer

    import train_full

    AcceleratorState._reset_state(reset_partial_state=True)
    args = train_full.parse_args(run_args(tiny_gpt2, glue_dir, str(tmp_path / "out"), *flags, task=task))
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    tokenizer.pad_token = tokenizer.eos_token
    return make_dataloaders(args, make_accelerator(args), tokenizer)


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
    run_in_process("train_full.py", run_args(tiny_gpt2, glue_dir, out, "--validation_size", "24",
                                             "--num_train_epochs", "3", "--eval_steps", "2"))
    res = results(out)
    history = res["log_history"]
    assert all("val_accuracy" in h and "accuracy" in h for h in history)
    best = max(history, key=lambda h: h["val_accuracy"])  # the first of equal ones, as the run keeps it
    assert res["best_metrics"]["step"] == best["step"]
    assert res["validation_metrics"] == {"accuracy": best["val_accuracy"]}
    assert res["test_metrics"] == {"accuracy": best["accuracy"]}
    assert res["stopped_early_at_step"] is None and history[-1]["step"] == 3 * 9  # 72 rows: 9 steps an epoch


def early_stopping_args(tiny_gpt2, glue_dir, out, *extra):
    """A learning rate so small that the validation accuracy never moves: patience K stops the run
    at evaluation K + 1 (the first evaluation sets the best)."""
    return run_args(tiny_gpt2, glue_dir, out, "--validation_size", "24", "--learning_rate", "1e-12",
                    "--num_train_epochs", "3", "--eval_steps", "1", "--early_stopping_patience", "3", *extra)


def test_early_stopping_stops_and_resumes_with_its_count(tiny_gpt2, glue_dir, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_in_process("train_full.py", early_stopping_args(tiny_gpt2, glue_dir, whole, "--checkpointing_steps", "2"))
    res = results(whole)
    assert res["stopped_early_at_step"] == 4 and [h["step"] for h in res["log_history"]] == [1, 2, 3, 4]
    assert res["best_metrics"]["step"] == 1
    assert sorted(os.listdir(whole / "checkpoints")) == ["step_2", "step_4"]
    # The checkpoint at step 2 holds one evaluation without a gain: the resumed run stops at 4 too.
    run_in_process("train_full.py", early_stopping_args(tiny_gpt2, glue_dir, resumed, "--resume_from_checkpoint",
                                                        whole / "checkpoints" / "step_2"))
    again = results(resumed)
    assert again["stopped_early_at_step"] == 4 and again["log_history"] == res["log_history"]


def test_adam_epsilon_reaches_the_optimizer(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    run_in_process("train_full.py", run_args(tiny_gpt2, glue_dir, out, "--max_train_steps", "2",
                                             "--checkpointing_steps", "1", "--adam_epsilon", "1e-6"))
    state = torch.load(out / "checkpoints" / "step_1" / "optimizer.bin", weights_only=False)
    assert {g["eps"] for g in state["param_groups"]} == {1e-6}


@pytest.mark.parametrize("flags,expect", [
    (["--validation_size", "96"], "--validation_size 96 leaves nothing to train on: the training set has 96 rows"),
    (["--validation_size", "8", "--validation_dev_half"], "pass one of them"),
    (["--early_stopping_patience", "0"], "--early_stopping_patience must be at least 1"),
    (["--adam_epsilon", "0"], "--adam_epsilon must be positive"),
])
def test_bad_protocol_flags(tiny_gpt2, glue_dir, tmp_path, flags, expect):
    with pytest.raises(UsageError, match=re.escape(expect)):
        run_in_process("train_full.py", run_args(tiny_gpt2, glue_dir, tmp_path / "out", *flags))


@pytest.mark.parametrize("encoder_dropout", [True, False])
def test_encoder_dropout_changes_r_every_training_forward(encoder_dropout):
    """The backbone has no dropout here, the encoder has: two training-mode forwards of the same
    batch differ only when the encoder runs in train mode."""
    encoder = GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64,
                                   resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1))
    model = build_idpg(tiny.gpt2(), encoder, num_tokens=4, hidden=8, encoder_dropout=encoder_dropout,
                       init="original").train()  # (the default's last layer starts at zero: r has no effect yet)
    assert model.cache == (not encoder_dropout)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        a, b = (model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits for _ in range(2))
        assert (not torch.equal(a, b)) == encoder_dropout
        model.eval()  # evaluation: dropout off, the same r every time
        c, d = (model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits for _ in range(2))
        assert torch.equal(c, d)


sys.path.insert(0, os.path.join(ROOT, "bench"))
from seed_cost import parse_recipes as recipes  # noqa: E402


def test_every_recipe_names_the_original_number_and_valid_flags():
    """Cheap, in the default suite: each command parses with its script's own parser."""
    import importlib

    found = recipes()
    assert len(found) == 22
    for comment, argv in found:
        assert re.search(r": (original \d+\.\d+|not run in the original|settings recorded .*no number reported)",
                         comment), comment
        assert argv[:4] == ["accelerate", "launch", "--config_file", "accelerate_configs/zero2.yaml"]
        script = next(a for a in argv if a.startswith("train_"))
        rest = argv[argv.index(script) + 1:]
        args = importlib.import_module(script[:-3]).parse_args(rest)
        assert args.seed == 1234 and args.per_device_train_batch_size == 12 and args.adam_epsilon == 1e-6
        assert args.early_stopping_patience == 5 and args.max_length == 128
        assert (args.validation_size == 1000) != args.validation_dev_half


def recipe_data(glue_dir, tmp_path):
    """The fixtures, with SST-2 and MNLI train grown past the recipes' 1,000 held-out rows."""
    data = tmp_path / "glue"
    shutil.copytree(glue_dir, data)
    for folder in ("SST-2", "MNLI"):
        path = data / folder / "train.tsv"
        header, *rows = path.read_text().splitlines()
        grown = [rows[i % len(rows)] for i in range(1100)]
        if folder == "MNLI":  # a fresh index per row
            grown = [f"{i}\t" + row.split("\t", 1)[1] for i, row in enumerate(grown)]
        path.write_text("\n".join([header, *grown]) + "\n")
    return data


@pytest.mark.slow
@pytest.mark.parametrize("number", range(22))
def test_recipe_runs(number, tiny_gpt2, glue_dir, tmp_path):
    """Each recipe as written, on CPU for 2 steps: only the model, the data, the step count and the
    output folder are substituted; fp16 runs as fp32 (a GPU setting)."""
    _, argv = recipes()[number]
    argv = [a for a in argv if a not in ("--mixed_precision", "fp16")]
    script = next(a for a in argv if a.startswith("train_"))
    launch_args, args = argv[2:argv.index(script)], argv[argv.index(script) + 1:]
    swap = {"--model_name_or_path": tiny_gpt2, "--encoder_name_or_path": tiny_gpt2,
            "--output_dir": str(tmp_path / "out")}
    args = [swap.get(args[i - 1], a) if i else a for i, a in enumerate(args)]
    args += ["--data_dir", str(recipe_data(glue_dir, tmp_path)), "--max_train_steps", "2"]
    assert launch_args == CONFIGS["zero2"][:2]  # the yaml as written: one process
    check_ok(launch(script, launch_args, args))
    res = results(tmp_path / "out")
    assert res["log_history"][-1]["step"] == 2 and "test_metrics" in res
