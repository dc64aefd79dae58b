"""bench/accuracy_smollm2.py and its report: the command each grid run gets, per task, and the
README's grid table, which must be the one the committed results render."""
import os
import sys

from launch_utils import ROOT

sys.path.insert(0, os.path.join(ROOT, "bench"))
import accuracy_smollm2 as grid  # noqa: E402
import report  # noqa: E402


def flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_grid_commands_follow_the_task_budget():
    sst2 = grid.command("lora", 1, "/m", "/glue", "/out", "grid")
    rte = grid.command("lora", 1, "/m", "/glue", "/out", "grid", task="rte")
    assert [flag(sst2, f) for f in ("--task", "--max_train_samples", "--max_length", "--seed")] == ["sst2", "4000",
                                                                                                  "64", "1"]
    assert [flag(rte, f) for f in ("--task", "--max_train_samples", "--max_length")] == ["rte", "2490", "128"]
    assert "--learning_rate" not in rte and "--validation_size" not in rte  # the grid runs the defaults, on dev
    sweep = grid.command("prefix", 0, "/m", "/glue", "/out", "sweep", rate=1e-3)
    assert flag(sweep, "--prefix_learning_rate") == "0.001" and flag(sweep, "--validation_size") == "400"
    ref = grid.command("peft:prompt", 0, "/m", "/glue", "/out", "grid", task="mrpc")
    assert flag(ref, "--task") == "mrpc" and flag(ref, "--method_learning_rate") == "0.03"  # train_prompt's default


def test_dev_majority(glue_dir):
    from common.data import read_tsv

    labels = read_tsv("rte", os.path.join(glue_dir, "RTE", "dev.tsv"))["label"]
    share = grid.dev_majority(glue_dir, "rte")
    assert 50 <= share <= 100 and share == 100 * max(labels.count(0), labels.count(1)) / len(labels)


def test_the_readme_shows_the_grid_table():
    path = os.path.join(ROOT, "bench", "results", "accuracy-smollm2-grid.json")
    with open(os.path.join(ROOT, "README.md")) as f:
        assert report.smollm2_grid_table(path) in f.read(), "run python bench/report.py"
