"""GLUE loading: every file format quirk on the fixtures (tests/data/glue), and the real files'
row and label counts when they are there (../shared/glue or $GLUE_DIR)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from common.data import Collator, load_glue, read_rows, read_tsv, tokenize
from common.errors import UsageError
from common.tasks import TASKS
from tests.helpers import ROOT

# Row counts and label counts from ../shared/glue/SOURCES.md
EXPECTED = {
    ("sst2", "SST-2/train.tsv"): (67349, {1: 37569, 0: 29780}),
    ("sst2", "SST-2/dev.tsv"): (872, {1: 444, 0: 428}),
    ("rte", "RTE/train.tsv"): (2490, {0: 1249, 1: 1241}),  # entailment 0, not_entailment 1
    ("rte", "RTE/dev.tsv"): (277, {0: 146, 1: 131}),
    ("cola", "CoLA/train.tsv"): (8551, {1: 6023, 0: 2528}),
    ("cola", "CoLA/dev.tsv"): (1043, {1: 721, 0: 322}),
    ("mrpc", "MRPC/train.tsv"): (3668, {1: 2474, 0: 1194}),
    ("mrpc", "MRPC/dev.tsv"): (408, {1: 279, 0: 129}),
    ("qnli", "QNLI/dev.tsv"): (5463, {0: 2702, 1: 2761}),
    ("mnli", "MNLI/dev_matched.tsv"): (9815, {0: 3479, 1: 3123, 2: 3213}),
    ("mnli", "MNLI/train.kshot-subset.tsv"): (480, {0: 160, 1: 160, 2: 160}),
}


@pytest.mark.parametrize("task,name", list(EXPECTED))
def test_every_real_file_loads_with_counts_and_labels(real_glue, task, name):
    rows, label_counts = EXPECTED[(task, name)]
    data = read_tsv(task, os.path.join(real_glue, name))
    assert len(data["label"]) == rows
    assert {k: data["label"].count(k) for k in label_counts} == label_counts
    for key in TASKS[task].text_keys:
        assert len(data[key]) == rows and all(isinstance(t, str) and t for t in data[key])


def test_real_stsb_is_regression(real_glue):
    for name, rows in (("train.tsv", 5749), ("dev.tsv", 1500)):
        data = read_tsv("stsb", os.path.join(real_glue, "STS-B", name))
        assert len(data["label"]) == rows
        assert all(isinstance(x, float) and 0.0 <= x <= 5.0 for x in data["label"])


def test_real_quirks_are_read_as_glue_wrote_them(real_glue):
    rte = read_tsv("rte", os.path.join(real_glue, "RTE", "train.tsv"))
    assert rte["sentence1"][rte["index"].index(2164)].startswith('"That film')  # bare quote kept
    mrpc = read_tsv("mrpc", os.path.join(real_glue, "MRPC", "dev.tsv"))  # BOM before the header
    assert mrpc["sentence1"][0].startswith("He said the foodservice pie business")
    # no header, no final newline
    cola = read_tsv("cola", os.path.join(real_glue, "CoLA", "dev.tsv"))
    assert cola["sentence"][0] == "The sailors rode the breeze clear of the rocks."
    mnli = read_tsv("mnli", os.path.join(real_glue, "MNLI", "dev_matched.tsv"))
    assert (mnli["premise"][0], mnli["hypothesis"][0].strip(), mnli["label"][0]) == (
        "The new rights are nice enough",
        "Everyone really likes the newest benefits",
        1,
    )


# The fixtures: a few rows per task in each task's exact format (tests/data/make_glue_fixtures.py).
FIXTURE_ROWS = {
    ("sst2", "SST-2"): (96, 32),
    ("rte", "RTE"): (32, 16),
    ("cola", "CoLA"): (24, 12),
    ("mrpc", "MRPC"): (24, 12),
    ("stsb", "STS-B"): (24, 12),
    ("mnli", "MNLI"): (24, 12),
    ("qnli", "QNLI"): (16, 8),
    ("qqp", "QQP"): (24, 12),
    ("wnli", "WNLI"): (16, 8),
}


def test_every_task_the_scripts_accept_has_fixtures():
    assert {task for task, _ in FIXTURE_ROWS} == set(TASKS)


@pytest.mark.parametrize("task,folder", list(FIXTURE_ROWS))
def test_every_fixture_task_loads(glue_dir, task, folder):
    data = load_glue(task, glue_dir)
    split = TASKS[task].eval_splits[0]
    assert (len(data["train"]), len(data[split])) == FIXTURE_ROWS[(task, folder)]
    labels = set(data["train"]["label"])
    if task == "stsb":
        assert TASKS[task].num_labels == 1 and all(0.0 <= x <= 5.0 for x in labels)
    else:
        assert labels == set(range(TASKS[task].num_labels))
    for key in TASKS[task].text_keys:
        assert all(isinstance(t, str) and t and "\t" not in t for t in data["train"][key])


def test_fixture_quirks_are_read_as_glue_writes_them(glue_dir):
    rte = read_tsv("rte", os.path.join(glue_dir, "RTE", "train.tsv"))
    assert rte["sentence1"][3].startswith('"That film was shot in Paris,"')  # a bare quote, kept
    mrpc = read_tsv("mrpc", os.path.join(glue_dir, "MRPC", "dev.tsv"))  # a BOM before the header
    assert mrpc["sentence1"][0] == "My neighbour left Lisbon last year." and mrpc["label"][0] == 1
    assert open(os.path.join(glue_dir, "MRPC", "dev.tsv"), "rb").read(3) == b"\xef\xbb\xbf"
    cola_path = os.path.join(glue_dir, "CoLA", "dev.tsv")  # no header, no final newline
    assert not open(cola_path).read().endswith("\n")
    cola = read_tsv("cola", cola_path)
    assert cola["sentence"][0] == "Paris painted the film my neighbour." and cola["label"][0] == 0
    # 16 columns, the label last
    mnli = read_tsv("mnli", os.path.join(glue_dir, "MNLI", "dev_matched.tsv"))
    assert (mnli["premise"][1], mnli["hypothesis"][1], mnli["label"][1]) == (
        "My neighbour visited a small village last year.",
        "My neighbour visited a small village last year with a friend.",
        1,
    )
    # the space before the tab is kept
    sst2 = read_tsv("sst2", os.path.join(glue_dir, "SST-2", "train.tsv"))
    assert sst2["sentence"][0].endswith(" ")


def test_load_glue_splits_and_test_file(glue_dir, tmp_path):
    data = load_glue("rte", glue_dir)
    assert set(data) == {"train", "validation"} and len(data["validation"]) == 16
    # A test file has no label column: label -1, as on the hub.
    shutil.copytree(os.path.join(glue_dir, "RTE"), tmp_path / "RTE")
    lines = open(tmp_path / "RTE" / "dev.tsv").read().splitlines()
    (tmp_path / "RTE" / "test.tsv").write_text("\n".join(line.rsplit("\t", 1)[0] for line in lines[:11]) + "\n")
    data = load_glue("rte", str(tmp_path))
    assert len(data["test"]) == 10 and set(data["test"]["label"]) == {-1}


def test_missing_file_is_a_clear_error(glue_dir, tmp_path):
    os.makedirs(tmp_path / "MNLI")
    # no train.tsv
    shutil.copy(os.path.join(glue_dir, "MNLI", "dev_matched.tsv"), tmp_path / "MNLI")
    with pytest.raises(UsageError) as e:
        load_glue("mnli", str(tmp_path))
    assert "MNLI/train.tsv" in str(e.value) and "--data_dir" in str(e.value)


def test_hub_offline_names_the_fix():
    code = "from common.data import load_glue; from common.errors import run_main; run_main(lambda: load_glue('rte'))"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME="/nonexistent-hf-home")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 2
    assert "--data_dir" in out.stderr.strip().splitlines()[-1] and "Traceback" not in out.stderr


def test_tokenize_truncates_and_collator_pads_both_sides(glue_dir, tiny_gpt2):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    ds = tokenize(load_glue("rte", glue_dir)["validation"].select(range(4)), "rte", tok, max_length=16)
    assert all(len(x) <= 16 for x in ds["input_ids"])
    rows = [ds[i] for i in range(4)]
    assert len({len(r["input_ids"]) for r in rows}) > 1  # the batch needs padding
    right = Collator(tok.eos_token_id, "right")(rows)
    left = Collator(tok.eos_token_id, "left")(rows)
    for r, lp, m in zip(right["position_ids"], left["position_ids"], right["attention_mask"]):
        n = int(m.sum())
        assert r[:n].tolist() == list(range(n)) == lp[-n:].tolist()
    assert right["labels"].tolist() == [r["label"] for r in rows]


def test_json_lines_split_at_newlines_only(tmp_path):
    texts = ["a line\u2028separator inside", "a next-line\x85inside", "a plain one"]  # raw, as ensure_ascii=False
    path = tmp_path / "rows.jsonl"
    for end in ("\n", "\r\n", "\r"):
        path.write_text("".join(json.dumps({"sentence": t, "label": "good"}, ensure_ascii=False) + end for t in texts))
        assert [row["sentence"] for _, row in read_rows(str(path))] == texts, repr(end)
