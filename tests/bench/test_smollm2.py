"""bench/accuracy_smollm2.py and its report: the command each grid run gets, per task, and the
README's grid table, which must be the one the committed results render."""

import json
import os

import pytest

from bench import accuracy_smollm2 as grid
from bench import report
from tests.helpers import ROOT


def flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_grid_commands_follow_the_task_budget():
    sst2 = grid.command("lora", 1, "/m", "/glue", "/out", "grid")
    rte = grid.command("lora", 1, "/m", "/glue", "/out", "grid", task="rte")
    assert [flag(sst2, f) for f in ("--task", "--max_train_samples", "--max_length", "--seed")] == [
        "sst2",
        "4000",
        "64",
        "1",
    ]
    assert [flag(rte, f) for f in ("--task", "--max_train_samples", "--max_length")] == ["rte", "2490", "128"]
    # the grid runs the defaults, on dev
    assert "--learning_rate" not in rte and "--validation_size" not in rte
    sweep = grid.command("prefix", 0, "/m", "/glue", "/out", "sweep", rate=1e-3)
    assert flag(sweep, "--prefix_learning_rate") == "0.001" and flag(sweep, "--validation_size") == "400"
    ref = grid.command("peft:prompt", 0, "/m", "/glue", "/out", "grid", task="mrpc")
    # train_prompt's default
    assert flag(ref, "--task") == "mrpc" and flag(ref, "--method_learning_rate") == "0.03"


def test_study_runs_the_grid_at_other_rates_and_lengths():
    """--part study: each method at each --rate of its swept flag (or its default), for --epochs."""
    cmd = grid.command("idpg-self", 0, "/m", "/glue", "/out", "study", rate=1e-2, task="rte", epochs=3)
    assert [flag(cmd, f) for f in ("--prompt_learning_rate", "--num_train_epochs", "--max_train_samples")] == [
        "0.01",
        "3",
        "2490",
    ]
    default = grid.command("prompt", 0, "/m", "/glue", "/out", "study", task="rte", epochs=3)
    assert "--prompt_learning_rate" not in default and flag(default, "--num_train_epochs") == "3"
    assert grid.jobs("study", ["prompt", "pg"], [0], [1e-2, 1e-3]) == [
        ("prompt", 0, 1e-2),
        ("prompt", 0, 1e-3),
        ("pg", 0, 1e-2),
        ("pg", 0, 1e-3),
    ]
    assert grid.jobs("study", ["prompt"], [0, 1]) == [("prompt", 0, None), ("prompt", 1, None)]


def test_the_methods_page_shows_the_rte_study():
    results = os.path.join(ROOT, "bench", "results")
    study = report.study_table(
        os.path.join(results, "accuracy-smollm2-study-rte.json"),
        os.path.join(results, "accuracy-smollm2-grid-rte.json"),
    )
    with open(os.path.join(ROOT, "docs", "methods.md")) as f:
        assert study in f.read(), "run python bench/report.py"


def test_dev_majority(glue_dir):
    from common.data import read_tsv

    labels = read_tsv("rte", os.path.join(glue_dir, "RTE", "dev.tsv"))["label"]
    share = grid.dev_majority(glue_dir, "rte")
    assert 50 <= share <= 100 and share == 100 * max(labels.count(0), labels.count(1)) / len(labels)


def test_the_docs_show_the_grid_and_the_readme_its_summary():
    path = os.path.join(ROOT, "bench", "results", "accuracy-smollm2-grid.json")
    with open(os.path.join(ROOT, "docs", "benchmarks.md")) as f:
        text = f.read()
    assert report.smollm2_grid_table(path) in text, "run python bench/report.py"
    with open(os.path.join(ROOT, "bench", "README.md")) as f:  # (the targets: for us, not the users' pages)
        assert report.grid_targets(path) in f.read(), "run python bench/report.py"
    with open(os.path.join(ROOT, "README.md")) as f:
        assert report.methods_table(path) in f.read(), "run python bench/report.py"


def grid_file(tmp_path, accuracies, warnings=None):
    """A grid's JSON of one seed-0 run per method (`accuracies`: method -> dev accuracy, full with 100 trainable
    weights, the others 1), with `warnings` (method -> its run's) where given."""
    import json

    runs = {
        f"{name}/0": {
            "method": name,
            "seed": 0,
            "metrics": {"accuracy": accuracy},
            "trainable_params": 100 if name == "full" else 1,
            **({"warnings": warnings[name]} if name in (warnings or {}) else {}),
        }
        for name, accuracy in accuracies.items()
    }
    head = {"model": "m", "task": "sst2", "threads_per_run": 1, "dev_majority": 50.92}
    budget = {"rows": 4000, "epochs": 1, "batch": 16, "max_length": 64}
    path = tmp_path / "grid.json"
    path.write_text(json.dumps({**head, "budget": budget, "summary": grid.summarise(runs, "grid"), "runs": runs}))
    return path


def test_the_targets_say_what_is_missed(tmp_path):
    text = report.grid_targets(grid_file(tmp_path, {"full": 0.86, "lora": 0.80, "prompt": 0.55}))
    assert "Less than 10 points above the majority class: prompt (55.00)" in text
    assert "lora against full fine-tuning: -6.00 points (more than 2)" in text
    assert "Fewer than 3 seeds so far: full, lora, prompt" in text


def test_the_targets_do_not_call_a_method_far_above_full_within_2(tmp_path):
    text = report.grid_targets(grid_file(tmp_path, {"full": 0.86, "pfeiffer": 0.89, "lora": 0.855}))
    assert "pfeiffer against full fine-tuning: +3.00 points (better by more than 2)" in text
    assert "lora against full fine-tuning: -0.50 points (within 2)" in text


def test_a_reference_run_asks_no_hub_for_our_defaults(monkeypatch):
    def asked(name, timeout=3.0):
        raise AssertionError(f"the hub was asked for {name}")  # (offline, as on this machine: the run failed)

    monkeypatch.setattr("common.args.hub_or_offline", asked)
    assert flag(grid.command("peft:lora", 0, "/m", "/glue", "/out", "grid", task="rte"), "--max_grad_norm") == "1.0"


def test_a_run_that_cannot_start_is_saved_as_failed_and_the_others_are_saved(tmp_path, glue_dir, monkeypatch):
    def run(name, *args):
        if name == "lora":
            raise RuntimeError("no command for it")
        return {"metrics": {"accuracy": 0.75}, "trainable_params": 1}

    monkeypatch.setattr(grid, "run", run)
    monkeypatch.setattr("bench.smollm2.smollm2_dir", lambda: "/m")
    out = tmp_path / "grid.json"
    argv = ["--part", "grid", "--task", "rte", "--seeds", "0", "--methods", "lora", "full", "--data_dir", glue_dir]
    monkeypatch.setattr("sys.argv", ["accuracy_smollm2.py", *argv, "--out", str(out)])
    grid.main()
    runs = json.load(open(out))["runs"]
    assert (
        runs["lora/0"]["error"] == "RuntimeError: no command for it" and runs["full/0"]["metrics"]["accuracy"] == 0.75
    )


def test_the_references_clip_as_our_script_does_by_default():
    lora = grid.command("peft:lora", 0, "/m", "/glue", "/out", "grid")
    prompt = grid.command("peft:prompt", 0, "/m", "/glue", "/out", "grid")
    assert flag(lora, "--max_grad_norm") == "1.0" and flag(prompt, "--max_grad_norm") == "0.0"


def test_a_run_that_warned_keeps_its_row_and_its_warning(tmp_path):
    said = ["accuracy 0.5092 is within 1 point of always predicting the majority class; try other rates"]
    table = report.smollm2_grid_table(grid_file(tmp_path, {"full": 0.86, "houlsby": 0.5092}, {"houlsby": said}))
    assert "| houlsby | 1 | 50.92" in table
    assert "Warnings:\n- houlsby/0: accuracy 0.5092 is within 1 point of always predicting the majority class" in table
    assert "try other rates" not in table


def test_the_study_shows_each_run_beside_the_grids_at_the_defaults(tmp_path):
    import json

    grid_path = grid_file(tmp_path, {"idpg-self": 0.5162, "lora": 0.6354})
    run = {"method": "idpg-self", "seed": 0, "rate": 0.01, "epochs": 3, "metrics": {"accuracy": 0.6}}
    head = {"model": "m", "task": "rte", "dev_majority": 52.71}
    study = tmp_path / "study.json"
    budget = {"rows": 2490, "batch": 16, "max_length": 128}
    study.write_text(json.dumps({**head, "budget": budget, "runs": {"idpg-self/0/0.01/3ep": run}}))
    table = report.study_table(study, grid_path)
    assert "| idpg-self | 0 | the script's | 1 (156) | 51.62 [" in table  # the grid's run, first
    assert table.index("| idpg-self | 0 | the script's") < table.index("| idpg-self | 0 | 0.01 | 3 (468) | 60.00 [")
    assert "| lora |" not in table and "+7.29" in table  # 60.00 - 52.71


@pytest.mark.parametrize("max_grad_norm", ["0", "1.0"])
def test_the_reference_clips_only_when_asked(max_grad_norm, tiny_gpt2, glue_dir, monkeypatch, capsys):
    import json
    import sys

    import torch

    from bench import reference_train

    norms = []
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, m: norms.append(m) or clip(p, m))
    argv = ["--library", "peft", "--method", "prompt", "--model_name_or_path", tiny_gpt2, "--task", "sst2"]
    argv += ["--data_dir", glue_dir, "--max_train_samples", "16", "--per_device_train_batch_size", "8"]
    argv += ["--learning_rate", "1e-3", "--method_learning_rate", "1e-2", "--max_grad_norm", max_grad_norm]
    monkeypatch.setattr(sys, "argv", ["reference_train.py", *argv])
    reference_train.main()
    assert norms == ([1.0, 1.0] if max_grad_norm == "1.0" else [])
    assert "accuracy" in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]


def test_the_minilm_table_runs_ours_unclipped_as_its_references():
    from bench import accuracy

    ours = accuracy.command("lora", "sst2", 0, "/m", "/glue", "/out", accuracy.BUDGET)
    assert flag(ours, "--max_grad_norm") == "0"


def test_rows_that_score_the_same_are_told_apart_by_their_losses():
    """Two rows of the same seed with equal metrics: one computation when every logged loss agrees, else by chance."""
    log = lambda *losses: [{"step": 10 * i, "loss": x} for i, x in enumerate(losses, 1)]  # noqa: E731
    runs = {
        "idpg/0": {"metrics": {"accuracy": 0.8475}, "log_history": log(0.7, 0.31)},
        "idpg-self/0": {"metrics": {"accuracy": 0.8475}, "log_history": log(0.7, 0.31)},
        "prompt/0": {"metrics": {"accuracy": 0.8475}, "log_history": log(0.7, 0.34)},
        "lora/0": {"metrics": {"accuracy": 0.85}, "log_history": log(0.7, 0.31)},
    }
    text = " ".join(report.twins(runs, ["lora", "prompt", "idpg", "idpg-self"]))
    assert "idpg and idpg-self score the same at seed 0, the same computation here" in text
    assert (
        "prompt and idpg score the same at seed 0, equal by chance: their last logged losses are 0.3400 and 0.3100"
        in text
    )
    assert "lora" not in text


def test_idpg_against_prompt_tuning_is_paired_by_seed():
    """IDPG minus prompt tuning per seed, and the mean's Student-t interval: wide over 3 seeds that disagree."""
    acc = {"idpg": [0.85, 0.86, 0.80], "prompt": [0.84, 0.84, 0.84]}
    runs = {f"{m}/{s}": {"metrics": {"accuracy": a}} for m, values in acc.items() for s, a in enumerate(values)}
    text = report.paired(runs)
    assert "+1.00 (seed 0), +2.00 (seed 1), -4.00 (seed 2); mean -0.33 points" in text
    assert "95% interval [-8.32, +7.65] over 3 seeds: it cannot tell the two apart" in text
    runs = {f"{m}/{s}": {"metrics": {"accuracy": a}} for m, a0 in (("idpg", 0.86), ("prompt", 0.84)) for s, a in
            enumerate([a0, a0 + 0.001, a0 - 0.001])}  # fmt: skip
    assert "it tells them apart" in report.paired(runs)
