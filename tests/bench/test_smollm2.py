"""bench/accuracy_smollm2.py and its report: the command each grid run gets, per task, and the
README's grid table, which must be the one the committed results render."""

import os

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
    assert report.grid_targets(path) in text, "run python bench/report.py"
    with open(os.path.join(ROOT, "README.md")) as f:
        assert report.methods_table(path) in f.read(), "run python bench/report.py"


def test_the_targets_say_what_is_missed(tmp_path):
    import json

    grid_file = tmp_path / "grid.json"
    runs = {
        "full/0": {"method": "full", "metrics": {"accuracy": 0.86}, "trainable_params": 100},
        "lora/0": {"method": "lora", "metrics": {"accuracy": 0.80}, "trainable_params": 1},
        "prompt/0": {"method": "prompt", "metrics": {"accuracy": 0.55}, "trainable_params": 1},
    }
    summary = grid.summarise(runs, "grid")
    grid_file.write_text(json.dumps({"summary": summary, "runs": runs, "dev_majority": 50.92}))
    text = report.grid_targets(grid_file)
    assert "Less than 10 points above the majority class: prompt (55.00)" in text
    assert "lora against full fine-tuning: -6.00 points (more than 2)" in text
    assert "Fewer than 3 seeds so far: full, lora, prompt" in text


def test_the_targets_do_not_call_a_method_far_above_full_within_2(tmp_path):
    import json

    grid_file = tmp_path / "grid.json"
    runs = {
        "full/0": {"method": "full", "metrics": {"accuracy": 0.86}, "trainable_params": 100},
        "pfeiffer/0": {"method": "pfeiffer", "metrics": {"accuracy": 0.89}, "trainable_params": 1},
        "lora/0": {"method": "lora", "metrics": {"accuracy": 0.855}, "trainable_params": 1},
    }
    grid_file.write_text(json.dumps({"summary": grid.summarise(runs, "grid"), "runs": runs, "dev_majority": 50.92}))
    text = report.grid_targets(grid_file)
    assert "pfeiffer against full fine-tuning: +3.00 points (better by more than 2)" in text
    assert "lora against full fine-tuning: -0.50 points (within 2)" in text
