"""recipes/seed_gpt2xl.sh: the original experiments' runs as commands, each of which must keep running."""

import importlib
import re
import shutil

import pytest

from bench.seed_cost import parse_recipes as recipes
from tests.helpers import CONFIGS, check_ok, launch, results


def test_every_recipe_names_the_original_number_and_valid_flags():
    """Cheap, in the default suite: each command parses with its script's own parser."""

    found = recipes()
    assert len(found) == 22
    for comment, argv in found:
        assert re.search(
            r": (original \d+\.\d+|not run in the original|settings recorded .*no number reported)", comment
        ), comment
        assert argv[:4] == ["accelerate", "launch", "--config_file", "accelerate_configs/zero2.yaml"]
        script = next(a for a in argv if a.startswith("train_"))
        rest = argv[argv.index(script) + 1 :]
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
    launch_args, args = argv[2 : argv.index(script)], argv[argv.index(script) + 1 :]
    swap = {
        "--model_name_or_path": tiny_gpt2,
        "--encoder_name_or_path": tiny_gpt2,
        "--output_dir": str(tmp_path / "out"),
    }
    args = [swap.get(args[i - 1], a) if i else a for i, a in enumerate(args)]
    args += ["--data_dir", str(recipe_data(glue_dir, tmp_path)), "--max_train_steps", "2"]
    assert launch_args == CONFIGS["zero2"][:2]  # the yaml as written: one process
    check_ok(launch(script, launch_args, args))
    res = results(tmp_path / "out")
    assert res["log_history"][-1]["step"] == 2 and "test_metrics" in res
