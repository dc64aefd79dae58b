"""Day-to-day use: --help answers at once with every default, flags from a file, the label of a
finished run for a few sentences, one table of many runs."""

import os
import re
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, args_for, cli, one_line, results, run_in_process

SCRIPTS = ["train_full.py", "train_lora.py", "train_prefix.py", "train_adapter.py", "train_prompt.py", "train_idpg.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_answers_at_once_with_every_default(script):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0 and seconds < 2, (seconds, proc.stderr[-500:])
    # Each option's block: from its line ("  --name ...") to the next option's.
    blocks = re.split(r"\n(?=  -)", proc.stdout.split("options:", 1)[1])
    options = {b.split()[0].rstrip(","): " ".join(b.split()) for b in blocks if b.strip().startswith("-")}
    assert len(options) >= 30
    for option, block in options.items():
        assert "(default:" in block or option in ("-h", "--task"), block
    text = " ".join(proc.stdout.split())
    defaults = {"train_lora.py": "0.0005", "train_prefix.py": "0.001", "train_prompt.py": "0.001"}
    if script in defaults:  # the script's own default for a shared flag
        assert (
            f"--learning_rate LEARNING_RATE AdamW's rate (the head's, with a method's) (default: {defaults[script]})"
            in text
        )


def test_flags_from_a_file_and_the_command_line_wins(tiny_gpt2, glue_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1e-3\nmax_train_steps: 2\nlora_r: 2\n")
    out = tmp_path / "out"
    run_in_process("train_lora.py", args_for(tiny_gpt2, glue_dir, out, "--config", config, "--lora_r", "4"))
    import json

    flags = json.load(open(out / "args.json"))
    assert (flags["learning_rate"], flags["max_train_steps"], flags["lora_r"]) == (1e-3, 2, 4)
    config.write_text("learning_rat: 1e-3\n")
    message = one_line(*cli("train_lora.py", args_for(tiny_gpt2, glue_dir, tmp_path / "o2", "--config", config)))
    assert f"--config {config} names flags this script does not have: learning_rat" in message


def test_predict_and_summarize_read_a_finished_run(tiny_gpt2, glue_dir, tmp_path, capsys):
    out = tmp_path / "lora"
    run_in_process("train_lora.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "2", "--lora_r", "4"))
    import predict

    capsys.readouterr()
    predict.main([str(out), "a charming film", "a dull film"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.split("\t")[0] in ("negative", "positive") for line in lines)
    assert lines[0].endswith("\ta charming film")

    from bench import summarize

    capsys.readouterr()
    summarize.main([str(out), str(tmp_path / "missing"), "--png", str(tmp_path / "runs.png")])
    table = capsys.readouterr().out
    accuracy = 100 * results(out)["metrics"]["accuracy"]
    assert "| lora | lora | sst2 |" in table and f"| accuracy | {accuracy:.2f} |" in table
    assert (tmp_path / "runs.png").exists() and os.path.getsize(tmp_path / "runs.png") > 1000


def test_the_load_report_names_the_new_head_once(tiny_gpt2, glue_dir, tmp_path, capsys):
    """transformers' load report calls the new head "MISSING ... Consider training": the run says instead, once, that
    it is new and that this run trains it."""
    run_in_process("train_lora.py", args_for(tiny_gpt2, glue_dir, tmp_path / "o", "--max_train_steps", "1"))
    printed = capsys.readouterr()
    assert "MISSING" not in printed.out + printed.err
    assert printed.out.count("new, not in the checkpoint, trained by this run: score") == 1


def test_curves_have_honest_axes_the_majority_line_and_a_title():
    from common.results import curves_figure

    history = [{"step": s, "loss": 0.70 - 0.001 * s} for s in range(1, 21)] + [{"step": 20, "accuracy": 0.55}]
    fig = curves_figure(history, "accuracy", majority=0.5, title="train_lora.py on sst2: lora-sst2")
    loss_axis, metric_axis = fig.axes
    assert loss_axis.get_ylim()[0] == 0  # a 0.02 change of the loss looks like one
    assert any(list(line.get_ydata()) == [0.5, 0.5] for line in metric_axis.lines)  # the majority class's score
    assert loss_axis.get_title() == "train_lora.py on sst2: lora-sst2"


def test_without_matplotlib_the_manifest_does_not_promise_curves(tiny_gpt2, glue_dir, tmp_path, monkeypatch, capsys):
    """A file is listed in manifest.json only where the run can write it: with no matplotlib, no curves.png."""
    import json

    from common import loop
    from common import results as results_module

    monkeypatch.setattr(loop, "CURVES", [])  # as where `import matplotlib` fails
    monkeypatch.setattr(results_module, "curves_figure", lambda *args, **kwargs: None)
    run_in_process("train_full.py", args_for(tiny_gpt2, glue_dir, tmp_path / "o", "--max_train_steps", "1"))
    assert "curves.png" not in json.load(open(tmp_path / "o" / "manifest.json"))["outputs"]
    assert not (tmp_path / "o" / "curves.png").exists()
    assert "curves.png not written: matplotlib is not installed" in capsys.readouterr().out
