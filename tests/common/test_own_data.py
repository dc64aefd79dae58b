"""Your own data by flags alone: --train_file and --validation_file (and --test_file) in place of --task, CSV, TSV or
JSON lines, one or two text columns, labels read from the data (strings or whole numbers: classes; scores: a
regression), with GLUE's one-line errors."""

import json

import pytest

import predict
from tests.helpers import cli, one_line, results, run_in_process

REVIEWS = [("a charming, funny film", "good"), ("dull and far too long", "bad"), ("I loved every minute", "good")]
REVIEWS += [("a tired, empty sequel", "bad"), ("the best film this year", "good"), ("nothing works here", "bad")]


def write_csv(path, rows, header="sentence,label"):
    path.write_text(header + "\n" + "".join(f'"{t}",{y}\n' for t, y in rows))
    return path


def flags(model, out, train, dev, *extra):
    common = ["--model_name_or_path", model, "--output_dir", out, "--max_train_steps", "2", "--logging_steps", "1"]
    return ["--train_file", train, "--validation_file", dev, *common, *extra]


def test_a_csv_of_your_own_trains_and_predicts(tiny_gpt2, tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", REVIEWS * 4)
    dev = write_csv(tmp_path / "dev.csv", REVIEWS)
    test = write_csv(tmp_path / "test.csv", [(t, "") for t, _ in REVIEWS], header="sentence,label")
    run_in_process(
        "train_lora.py", flags(tiny_gpt2, tmp_path / "out", train, dev, "--test_file", test, "--do_predict")
    )
    res = results(tmp_path / "out")
    assert (
        res["task"] == "files" and set(res["metrics"]) == {"accuracy"} and res["majority_metrics"] == {"accuracy": 0.5}
    )
    saved = json.load(open(tmp_path / "out" / "args.json"))
    assert saved["train_file"] == str(train) and saved["task_labels"] == ["bad", "good"]
    rows = (tmp_path / "out" / "predictions" / "test.tsv").read_text().splitlines()
    assert (
        rows[0] == "index\tprediction" and {r.split("\t")[1] for r in rows[1:]} <= {"bad", "good"} and len(rows) == 7
    )
    capsys.readouterr()
    train.unlink()  # predict.py needs the run's folder only, not its data
    predict.main([str(tmp_path / "out"), "a charming film"])
    assert capsys.readouterr().out.split("\t")[0] in ("bad", "good")


def test_pairs_in_a_tsv_and_scores_in_json_lines(tiny_gpt2, tmp_path):
    pairs = tmp_path / "pairs.tsv"
    pairs.write_text(
        "sentence1\tsentence2\tlabel\n" + "".join(f"{t}\t{t} again\t{i % 3}\n" for i, (t, _) in enumerate(REVIEWS))
    )
    run_in_process("train_full.py", flags(tiny_gpt2, tmp_path / "pairs", pairs, pairs))
    assert results(tmp_path / "pairs")["total_params"] > 0  # three classes, 0 1 2, from the file
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(json.dumps({"text": t, "score": i / 2}) + "\n" for i, (t, _) in enumerate(REVIEWS)))
    extra = ["--text_columns", "text", "--label_column", "score"]
    run_in_process("train_full.py", flags(tiny_gpt2, tmp_path / "scores", scores, scores, *extra))
    assert set(results(tmp_path / "scores")["metrics"]) == {"pearson", "spearmanr"}  # fractions: a regression


@pytest.mark.parametrize(
    "train_text,extra,expected",
    [
        ("text,label\nfine,good\n", [], "line 2: no sentence column, or it is empty (name them with --text_columns"),
        ("sentence,label\nfine,good\nbad,good\n", [], "holds one label only (good): a classifier needs two or more"),
        ('sentence,label\n"fine",good,extra\n', [], "line 2: 3 fields where the header has 2"),
    ],
)
def test_files_that_do_not_fit_are_one_line(train_text, extra, expected, tiny_gpt2, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text(train_text)
    dev = write_csv(tmp_path / "dev.csv", REVIEWS)
    message = one_line(*cli("train_full.py", flags(tiny_gpt2, tmp_path / "o", train, dev, *extra)))
    assert expected in message, message


def test_a_dev_label_the_training_file_lacks_is_refused(tiny_gpt2, tmp_path):
    train = write_csv(tmp_path / "train.csv", REVIEWS)
    dev = write_csv(tmp_path / "dev.csv", [*REVIEWS, ("so-so", "neutral")])
    message = one_line(*cli("train_full.py", flags(tiny_gpt2, tmp_path / "o", train, dev)))
    assert f"{dev}, line 8: label 'neutral' is not one of the training file's (bad, good)" in message


def test_task_or_files_one_of_them(tiny_gpt2, tmp_path):
    train = write_csv(tmp_path / "train.csv", REVIEWS)
    both = ["--task", "sst2", "--train_file", train, "--validation_file", train, "--output_dir", tmp_path / "o"]
    assert "pass --task (a GLUE task), or --train_file" in one_line(*cli("train_full.py", both))
    alone = ["--train_file", train, "--output_dir", tmp_path / "o"]
    assert "--train_file goes with --validation_file" in one_line(*cli("train_full.py", alone))
