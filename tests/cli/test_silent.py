"""Nothing silently wrong, part four: a run that learned nothing says so, your data is read as you meant it or
refused, and what a run rests on (its args.json, its base model) cannot change under it unnoticed. Each case runs
through the command line (`cli`: a script's main() under run_main, as `python train_X.py` runs it)."""

import json

import pytest

from tests.helpers import args_for, cli, glue_copy, launch, one_line, results


# 1. The learning check at chance, in results.json and in the final line.
def test_a_run_at_chance_says_so_in_its_final_line(tiny_gpt2, glue_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code, _ = cli("train_full.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "1", learning_rate=1e-9))
    final = [line for line in capsys.readouterr().out.splitlines() if line.startswith("final ")]
    res = results(out)
    said = "cannot be told from always predicting the majority class (0.5000)"
    assert code == 0 and len(final) == 1 and "warning: accuracy 0.5000 [" in final[0] and said in final[0]
    assert any(said in w and "--learning_rate 1e-09" in w for w in res["warnings"])


def test_a_regression_at_chance_says_so(tiny_gpt2, glue_dir, tmp_path, capsys):
    out = tmp_path / "out"
    flags = args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "1", task="stsb", max_eval_samples=24)
    code, _ = cli("train_full.py", flags)
    final = [line for line in capsys.readouterr().out.splitlines() if line.startswith("final ")][0]
    res = results(out)
    pearson = res["metrics"]["pearson"]
    assert code == 0 and res["majority_metrics"]["pearson"] is None  # (a constant score has no correlation)
    # A random model's correlation on 24 rows: its interval holds 0, or lies below it; never a silent line.
    expected = "is below 0" if res["intervals"]["pearson"][1] < 0 else "cannot be told from no correlation (0)"
    assert f"warning: pearson {pearson:.4f}" in final and expected in final, final
    assert any(expected in w for w in res["warnings"])


def test_intervals_never_look_certain(tiny_gpt2, glue_dir, tmp_path):
    """One row, one class, two STS-B rows: an accuracy gets Wilson's interval, which is never of zero width; a
    bootstrap on so few rows gives none (null), and the run says why."""
    one = tmp_path / "one"
    cli("train_full.py", args_for(tiny_gpt2, glue_dir, one, "--max_train_steps", "1", max_eval_samples=1))
    low, high = results(one)["intervals"]["accuracy"]
    assert 0 <= low < high <= 1 and high - low > 0.5
    two = tmp_path / "two"
    cli("train_full.py", args_for(tiny_gpt2, glue_dir, two, "--max_train_steps", "1", task="stsb", max_eval_samples=2))
    res = results(two)
    assert res["intervals"] == {"pearson": None, "spearmanr": None}
    assert any("no 95% interval of pearson, spearmanr: too few rows (2; at least 4)" in w for w in res["warnings"])
    mrpc = tmp_path / "mrpc"
    cli(
        "train_full.py", args_for(tiny_gpt2, glue_dir, mrpc, "--max_train_steps", "1", task="mrpc", max_eval_samples=3)
    )
    res = results(mrpc)
    assert res["intervals"]["f1"] is None and res["intervals"]["accuracy"][1] > res["intervals"]["accuracy"][0]
    json.dumps(res)  # (plain JSON: null, never NaN)


# 3. Your data read as you meant it: the kind of task follows how the labels are written (docs/data.md), the run says
# which, and a column that mixes kinds is refused with the rows that disagree.
def own(tmp_path, labels, texts=None, name="train.csv"):
    texts = texts or [f"review number {i}" for i in range(len(labels))]
    path = tmp_path / name
    path.write_text("sentence,label\n" + "".join(f'"{t}",{y}\n' for t, y in zip(texts, labels)))
    return path


def own_flags(model, tmp_path, train, dev=None, *extra):
    dev = dev or train
    files = ["--train_file", train, "--validation_file", dev, "--model_name_or_path", model]
    return [*files, "--output_dir", tmp_path / "out", "--max_train_steps", "1", *extra]


@pytest.mark.parametrize(
    "labels,expected",
    [
        (["0", "1", "1", "0", "1.0", "0"], "1 written as a score (line 6: '1.0')"),
        (["0", "1", "1", "0", "0.5", "1"], "1 written as a score (line 6: '0.5')"),
        (["0.5", "1.5", "2.0", "nan", "3.5", "4.0"], "1 written as a text (line 5: 'nan')"),
        (["0.5", "1.5", "2.0", "good", "3.5", "4.0"], "1 written as a text (line 5: 'good')"),
        (["good", "bad", "good", "bad", "3", "good"], "1 written as a whole number (line 6: '3')"),
        (["good", "bad", "  ", "bad"], "line 4: the label is empty"),
        (["good", "very\tgood", "bad"], "line 3: the label is empty, or holds a tab"),  # (predictions are TSV)
        (["0", "0", "good", "bad"], "2 written as a text (line 4: 'good', line 5: 'bad')"),  # a tie names the other
        (["1", "-1", "+1", "-1"], "the labels '+1' and '1' name one number"),  # not 3 classes
        (["0", "1", "01", "1"], "the labels '01' and '1' name one number"),
    ],
)
def test_a_label_column_that_mixes_kinds_is_refused_with_its_rows(labels, expected, tiny_gpt2, tmp_path):
    train = own(tmp_path, labels)
    message = one_line(*cli("train_full.py", own_flags(tiny_gpt2, tmp_path, train)))
    assert f"{train}" in message and expected in message, message


@pytest.mark.parametrize(
    "labels,kind,names",
    [
        ([".5", "1.25", "2e-1", "3.0", "4.", "0.0"], "regression", []),  # every label a score; .5 is a number
        (["2", "10", "1", "2", "10", "1"], "classification", ["1", "2", "10"]),  # whole numbers: classes, in order
        (["pos", "neg", "pos", "neg"], "classification", ["neg", "pos"]),
        (["+1", "-1", "+1", "-1"], "classification", ["-1", "+1"]),  # SVM-light's classes
        (["mi\u200cxaham", "na", "na", "mi\u200cxaham"], "classification", ["mi\u200cxaham", "na"]),  # a ZWNJ: Persian
    ],
)
def test_the_run_says_which_kind_it_read(labels, kind, names, tiny_gpt2, tmp_path, capsys):
    train = own(tmp_path, labels)
    code, _ = cli("train_full.py", own_flags(tiny_gpt2, tmp_path, train))
    first = [line for line in capsys.readouterr().out.splitlines() if line.startswith("your data:")]
    assert code == 0 and len(first) == 1
    said = "a regression (pearson)" if kind == "regression" else f"{len(names)} classes: {', '.join(names)}"
    assert said in first[0], first
    res = results(tmp_path / "out")
    assert res["task_kind"] == kind and json.load(open(tmp_path / "out" / "args.json"))["task_labels"] == names


def test_a_json_list_label_and_a_score_with_an_underscore_are_refused(tiny_gpt2, tmp_path):
    train = tmp_path / "train.jsonl"  # (the list was the class '[1]'; float() read '1_0' as 10.0)
    train.write_text('{"sentence": "a", "label": "good"}\n{"sentence": "b", "label": [1]}\n')
    message = one_line(*cli("train_full.py", own_flags(tiny_gpt2, tmp_path, train)))
    assert f"{train}, line 2: the label is empty, or holds a tab or line break, or is a JSON list" in message
    scores, dev = own(tmp_path, ["0.5", "1.5", "2.5"]), own(tmp_path, ["0.5", "1_0", "2.5"], name="dev.csv")
    message = one_line(*cli("train_full.py", own_flags(tiny_gpt2, tmp_path, scores, dev)))
    assert f"{dev}, line 3: the score must be a number, got '1_0'" in message
    named = tmp_path / "named.jsonl"  # (classes written '[1]' and '[2]': a validation list [1] is still no label)
    named.write_text('{"sentence": "a", "label": "[1]"}\n{"sentence": "b", "label": "[2]"}\n')
    listed = tmp_path / "listed.jsonl"
    listed.write_text('{"sentence": "a", "label": [1]}\n')
    message = one_line(*cli("train_full.py", own_flags(tiny_gpt2, tmp_path, named, listed)))
    assert f"{listed}, line 1: label '' is not one of the training file's" in message


def test_a_validation_file_of_training_rows_says_so(tiny_gpt2, tmp_path):
    """An eval split whose rows are training rows too scores memory, not new text: more than 1 in 20 of them is named in
    results.json, with the metric it feeds (CoLA's dev repeats 16 of its 1,043 training sentences: no word)."""

    def repeats():
        return [w for w in results(tmp_path / "out")["warnings"] if "are training rows too" in w]

    labels = ["good", "bad"] * 10
    train = own(tmp_path, labels)  # (own_flags' validation file is the training file unless told)
    code, _ = cli("train_full.py", own_flags(tiny_gpt2, tmp_path, train))
    said = (
        "20 of the 20 validation rows (scored as accuracy) are training rows too, the same tokens after --max_length"
    )
    assert code == 0 and [w for w in repeats() if said in w and w.endswith("remove them from a file")] == repeats()
    one = own(tmp_path, labels, ["review number 0", *(f"another review {i}" for i in range(19))], name="dev.csv")
    code, _ = cli("train_full.py", [*own_flags(tiny_gpt2, tmp_path, train, one), "--overwrite_output_dir"])
    assert code == 0 and repeats() == []
    two = own(tmp_path, labels, ["review number 0", "review number 1", *(f"a review {i}" for i in range(18))], "d.csv")
    code, _ = cli("train_full.py", [*own_flags(tiny_gpt2, tmp_path, train, two), "--overwrite_output_dir"])
    assert code == 0 and len(repeats()) == 1 and "2 of the 20 validation rows (scored as accuracy)" in repeats()[0]
    # A training file of duplicates: the rows held out (--validation_size) repeat those trained on, and the test
    # split (--do_predict: no labels, no score) is never named, even when it is the training file.
    twice = own(tmp_path, labels * 2, [f"review number {i % 20}" for i in range(40)], name="twice.csv")
    flags = ["--validation_size", "10", "--test_file", twice, "--do_predict", "--overwrite_output_dir"]
    code, _ = cli("train_full.py", [*own_flags(tiny_gpt2, tmp_path, twice, one), *flags])
    named = repeats()
    assert code == 0 and len(named) == 1 and "10 of the 10 heldout rows (scored as val_accuracy)" in named[0], named
    assert "drop the training file's duplicates" in named[0]


# 4. A column named twice.
@pytest.mark.parametrize(
    "name,text,expected",
    [
        (
            "train.csv",
            "sentence,label,sentence\na,good,b\nc,bad,d\n",
            "line 1: the header names the column 'sentence' twice",
        ),
        ("train.tsv", "sentence\tlabel\tlabel\na\tgood\tbad\nc\tbad\tgood\n", "the column 'label' twice"),
        (
            "train.jsonl",
            '{"sentence": "a", "label": "good", "label": "bad"}\n',
            "line 1: the object names 'label' twice",
        ),
    ],
)
def test_a_header_that_names_a_column_twice_is_refused(name, text, expected, tiny_gpt2, tmp_path):
    train = tmp_path / name
    train.write_text(text)
    message = one_line(*cli("train_full.py", own_flags(tiny_gpt2, tmp_path, train)))
    assert expected in message, message


def test_a_glue_header_that_names_a_column_twice_is_refused(tiny_gpt2, glue_dir, tmp_path):
    data = glue_copy(glue_dir, tmp_path, "SST-2", "dev.tsv", "sentence\tlabel\tsentence\na film\t1\tb\n")
    message = one_line(*cli("train_full.py", args_for(tiny_gpt2, data, tmp_path / "o")))
    assert "dev.tsv, line 1: the header names the column 'sentence' twice" in message


@pytest.mark.parametrize("columns", ["sentence,sentence", "sentence,label", "idx", "sentence,index"])
def test_text_columns_naming_a_column_twice_are_refused(columns, tiny_gpt2, tmp_path):
    train = tmp_path / "train.csv"  # (a text column named idx or index ended in a traceback: the run's own columns)
    train.write_text("sentence,label,idx,index\na film,good,a text,1\nthe film,bad,the text,2\n")
    message = one_line(*cli("train_full.py", own_flags(tiny_gpt2, tmp_path, train, None, "--text_columns", columns)))
    assert f"--text_columns {columns} names a column twice" in message


# 5. An empty text is refused at load, before the model (here a model that is nowhere: the data's line comes first).
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_an_empty_text_is_refused_before_the_model_loads(split, tiny_gpt2, tmp_path, monkeypatch):
    from common import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model loaded before the data"))
    good = own(tmp_path, ["good", "bad", "good"], name="good.csv")
    bad = own(tmp_path, ["good", "bad", "good"], texts=["fine", "   ", "ok"], name="bad.csv")
    files = {"train": good, "validation": good, "test": good, split: bad}
    flags = ["--train_file", files["train"], "--validation_file", files["validation"], "--test_file", files["test"]]
    flags += ["--do_predict", "--model_name_or_path", tiny_gpt2, "--output_dir", tmp_path / "out"]
    message = one_line(*cli("train_full.py", flags))
    assert f"{bad}, line 3: the sentence text is empty" in message, message


def test_an_empty_glue_text_is_refused(tiny_gpt2, glue_dir, tmp_path):
    data = glue_copy(glue_dir, tmp_path, "SST-2", "train.tsv", "sentence\tlabel\na fine film\t1\n \t0\n")
    message = one_line(*cli("train_full.py", args_for(tiny_gpt2, data, tmp_path / "o")))
    assert "train.tsv, line 3: the sentence text is empty" in message


def test_a_json_object_as_a_text_is_refused(tiny_gpt2, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text('{"sentence": "fine", "label": "good"}\n{"sentence": {"a": 1}, "label": "bad"}\n')
    message = one_line(*cli("train_full.py", own_flags(tiny_gpt2, tmp_path, train)))
    assert 'line 2: the sentence column holds {"a": 1}, not a text' in message


def test_predict_an_empty_text_is_one_line(tiny_gpt2, glue_dir, tmp_path):
    import predict
    from common.errors import run_main

    out = tmp_path / "out"
    cli("train_full.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "1"))
    for text in ["", "   "]:
        with pytest.raises(SystemExit) as e:
            run_main(lambda: predict.main([str(out), "a fine film", text]))
        assert e.value.code == 2


# 6. An args.json edited since the run is refused by predict.py and load_run.
@pytest.mark.parametrize("edit", ["swap labels", "lora_alpha"])
def test_an_edited_args_json_is_refused(edit, tiny_gpt2, glue_dir, tmp_path):
    from common.errors import UsageError
    from predict import load_run

    out = tmp_path / "out"
    cli("train_lora.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "1"))
    load_run(str(out))  # (as written: it loads)
    path = out / "args.json"
    flags = json.loads(path.read_text())
    if edit == "swap labels":
        flags["task_labels"] = flags["task_labels"][::-1]
        flags["task"] = None
    else:
        flags["lora_alpha"] = 160.0
    path.write_text(json.dumps(flags, indent=2))
    with pytest.raises(UsageError, match="args.json was edited since the run"):
        load_run(str(out))
    with pytest.raises(UsageError, match="args.json was edited since the run"):
        load_run(str(out), best=True)


# 7. A base model changed in place (the same folder, other weights) is noticed by a resume and by predict.py.
def test_a_model_changed_in_place_is_noticed(tiny_gpt2, glue_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from common.errors import UsageError
    from predict import load_run

    model = tmp_path / "model"
    shutil.copytree(tiny_gpt2, model)
    out = tmp_path / "out"
    flags = args_for(str(model), glue_dir, out, "--max_train_steps", "2", "--checkpointing_steps", "1")
    cli("train_full.py", flags)
    weights = load_file(model / "model.safetensors")
    save_file({k: v + 0.01 for k, v in weights.items()}, model / "model.safetensors", {"format": "pt"})
    message = one_line(*cli("train_full.py", [*flags, "--resume_from_checkpoint", "latest"]))
    assert f"the model folder {model} changed since {out}/checkpoints/step_2 was written" in message
    with pytest.raises(UsageError, match=f"the model folder {model} changed since the run trained on it"):
        load_run(str(out))


def test_the_model_folder_is_kept_as_an_absolute_path(tiny_gpt2, glue_dir, tmp_path, monkeypatch):
    import os

    monkeypatch.chdir(os.path.dirname(tiny_gpt2))
    out = tmp_path / "out"
    cli("train_full.py", args_for(os.path.basename(tiny_gpt2), glue_dir, out, "--max_train_steps", "1"))
    assert json.loads((out / "args.json").read_text())["model_name_or_path"] == tiny_gpt2
    monkeypatch.chdir(tmp_path)
    from predict import load_run

    load_run(str(out))  # from another folder


# 9. One line instead of a traceback.
@pytest.mark.parametrize("precision,expected", [("bf16", "mixed precision fp16"), ("fp16", "without a GPU")])
def test_base_dtype_float16_is_refused_where_it_cannot_work(
    precision, expected, tiny_gpt2, glue_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", precision)
    for script in ("train_lora.py", "train_prompt.py"):
        flags = args_for(tiny_gpt2, glue_dir, tmp_path / script, "--base_dtype", "float16")
        assert expected in one_line(*cli(script, flags))


def test_a_full_disk_during_a_save_names_the_folder(tiny_gpt2, glue_dir, tmp_path, monkeypatch):
    import errno

    from accelerate import Accelerator

    save_state = Accelerator.save_state

    def full_disk(self, folder, *args, **kwargs):
        save_state(self, folder, *args, **kwargs)  # (some files written: a partial checkpoint)
        if "step_2" in folder:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    out = tmp_path / "out"
    message = one_line(*cli("train_full.py", args_for(tiny_gpt2, glue_dir, out, "--checkpointing_steps", "1")))
    assert f"no space left writing {out}/checkpoints/step_2 (its partial files removed)" in message
    assert f"the last checkpoint is {out}/checkpoints/step_1" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1"]  # no step_2.tmp-* left


@pytest.mark.parametrize("name", [".lock", "manifest.json"])
def test_a_lock_or_manifest_that_is_a_folder_is_refused(name, tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    (out / name).mkdir(parents=True)
    message = one_line(*cli("train_full.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "1")))
    assert f"{out}/{name} is" in message and "move it away" in message


@pytest.mark.slow  # two processes and a wait of 10 s
def test_an_expired_ddp_timeout_names_the_flag(tiny_gpt2, glue_dir, tmp_path):
    proc = launch(
        "tests/cli/late_rank.py",
        "ddp",
        ["train_full.py", *args_for(tiny_gpt2, glue_dir, str(tmp_path / "o"), "--ddp_timeout", "3")],
    )
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]  # (then the launcher's report)
    assert proc.returncode != 0 and len(lines) == 1, proc.stderr[-3000:]
    assert "waited longer than --ddp_timeout for another rank" in lines[0]


# 10. Confusing before, clear now.
def test_a_lock_whose_pid_is_another_process_now_is_taken_over(tiny_gpt2, glue_dir, tmp_path):
    import os
    import socket

    out = tmp_path / "out"
    out.mkdir()
    # this test's own pid: alive, but not the process that started at that time
    (out / ".lock").write_text(f"{os.getpid()} {socket.gethostname()} abc 12345\n")
    code, err = cli("train_full.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "1"))
    assert code == 0, err
    assert not (out / ".lock").exists()


def test_a_refused_run_leaves_no_lock(tiny_gpt2, glue_dir, tmp_path):
    import shutil

    data = tmp_path / "glue"
    shutil.copytree(glue_dir, data)
    (data / "QQP" / "train.tsv").unlink()  # (a download cut short)
    out = tmp_path / "out"
    message = one_line(*cli("train_full.py", args_for(tiny_gpt2, data, out, task="qqp")))
    assert "missing" in message and "QQP/train.tsv" in message
    assert not (out / ".lock").exists()


def test_a_half_checkpoint_of_a_killed_run_is_removed_by_the_next(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    flags = args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "2", "--checkpointing_steps", "1")
    cli("train_full.py", flags)
    (out / "checkpoints" / "step_7.tmp-0123456789ab" / "pytorch_model").mkdir(parents=True)
    code, err = cli("train_full.py", [*flags, "--resume_from_checkpoint", "latest"])
    assert code == 0, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_1", "step_2"]


def test_own_test_file_ids_are_written_back(tiny_gpt2, tmp_path):
    train = own(tmp_path, ["good", "bad", "good", "bad"])
    test = tmp_path / "test.csv"
    test.write_text('index,sentence\ndoc-7,"a fine film"\ndoc-3,"a dull film"\n')
    flags = own_flags(tiny_gpt2, tmp_path, train, None, "--test_file", test, "--do_predict")
    code, err = cli("train_full.py", flags)
    assert code == 0, err
    rows = (tmp_path / "out" / "predictions" / "test.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows] == ["index", "doc-7", "doc-3"]


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--data_dir", "GLUE"], "--data_dir holds GLUE's files: with --train_file (your own data) drop it"),
        (["--do_predict"], "--do_predict labels the unlabeled test split, and there is none: pass --test_file"),
    ],
)
def test_inputs_that_would_be_ignored_are_refused(extra, expected, tiny_gpt2, glue_dir, tmp_path):
    train = own(tmp_path, ["good", "bad"])
    extra = [glue_dir if x == "GLUE" else x for x in extra]
    assert expected in one_line(*cli("train_full.py", own_flags(tiny_gpt2, tmp_path, train, None, *extra)))


@pytest.mark.parametrize(
    "text,expected",
    [
        ("config: other.yaml\n", "names another config file"),
        ("output_dir: 2024-01-01\n", "output_dir takes text, and YAML reads this as a date; write it in quotes"),
    ],
)
def test_config_files_say_what_they_cannot_mean(text, expected, tiny_gpt2, glue_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(text)
    flags = ["--task", "sst2", "--model_name_or_path", tiny_gpt2, "--data_dir", glue_dir, "--config", config]
    assert expected in one_line(*cli("train_full.py", flags))


def test_weights_that_did_not_move_name_a_tiny_clipping(tiny_gpt2, glue_dir, tmp_path):
    out = tmp_path / "out"
    cli("train_lora.py", args_for(tiny_gpt2, glue_dir, out, "--max_train_steps", "2", max_grad_norm=1e-30))
    warnings = results(out)["warnings"]
    assert any("did not change at all" in w and "--max_grad_norm 1e-30 may be why" in w for w in warnings), warnings


@pytest.mark.slow  # a 2-process run, stopped
def test_sigterm_to_the_ranks_says_what_sigterm_to_the_launcher_says(tiny_gpt2, glue_dir, tmp_path):
    import os
    import signal
    import subprocess
    import time

    from bench.launch import launch_command
    from common.outputs import steps

    for target in ("launcher", "ranks"):
        out = tmp_path / target
        flags = args_for(tiny_gpt2, glue_dir, str(out), "--num_train_epochs", "100000", "--checkpointing_steps", "5")
        cmd, env = launch_command("train_full.py", "ddp", flags)
        with open(tmp_path / f"{target}.err", "w") as err:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
            for _ in range(1200):
                if steps(out):
                    break
                time.sleep(0.1)
            ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            for pid in [proc.pid] if target == "launcher" else map(int, ranks):
                os.kill(pid, signal.SIGTERM)
            proc.wait(timeout=120)
        text = (tmp_path / f"{target}.err").read_text()
        lines = [line for line in text.splitlines() if line.startswith(("error: ", "terminated: ", "interrupted: "))]
        assert len(lines) == 1, (target, text[-3000:])
        assert lines[0].startswith(f"terminated: the last checkpoint is {out}/checkpoints/step_")
