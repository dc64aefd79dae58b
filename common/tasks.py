"""The GLUE tasks: their columns, labels, main metric and files.

Labels follow the hub dataset `nyu-mll/glue` (for example MNLI: entailment 0, neutral 1,
contradiction 2); STS-B is a regression with one output.
"""

from dataclasses import dataclass

from common.errors import UsageError


@dataclass(frozen=True)
class Task:
    text_keys: tuple  # hub column names of the one or two input texts
    label_names: tuple  # hub order; () for regression
    metric: str  # the main metric: best checkpoint and the final line
    tsv_dir: str  # folder in GLUE's download layout
    tsv_columns: tuple  # TSV header names of the texts, then of the label (CoLA: column numbers)
    eval_splits: tuple = ("validation",)
    test_splits: tuple = ("test",)

    @property
    def num_labels(self):
        return len(self.label_names) or 1

    @property
    def is_regression(self):
        return not self.label_names


TASKS = {
    "cola": Task(("sentence",), ("unacceptable", "acceptable"), "matthews_correlation", "CoLA", (3, 1)),
    "sst2": Task(("sentence",), ("negative", "positive"), "accuracy", "SST-2", ("sentence", "label")),
    "mrpc": Task(
        ("sentence1", "sentence2"),
        ("not_equivalent", "equivalent"),
        "f1",
        "MRPC",
        ("#1 String", "#2 String", "Quality"),
    ),
    "stsb": Task(("sentence1", "sentence2"), (), "pearson", "STS-B", ("sentence1", "sentence2", "score")),
    "qqp": Task(
        ("question1", "question2"),
        ("not_duplicate", "duplicate"),
        "f1",
        "QQP",
        ("question1", "question2", "is_duplicate"),
    ),
    "mnli": Task(
        ("premise", "hypothesis"),
        ("entailment", "neutral", "contradiction"),
        "accuracy",
        "MNLI",
        ("sentence1", "sentence2", "gold_label"),
        ("validation_matched", "validation_mismatched"),
        ("test_matched", "test_mismatched"),
    ),
    "qnli": Task(
        ("question", "sentence"),
        ("entailment", "not_entailment"),
        "accuracy",
        "QNLI",
        ("question", "sentence", "label"),
    ),
    "rte": Task(
        ("sentence1", "sentence2"),
        ("entailment", "not_entailment"),
        "accuracy",
        "RTE",
        ("sentence1", "sentence2", "label"),
    ),
    "wnli": Task(
        ("sentence1", "sentence2"),
        ("not_entailment", "entailment"),
        "accuracy",
        "WNLI",
        ("sentence1", "sentence2", "label"),
    ),
}

# hub split name -> GLUE TSV file name
TSV_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "test": "test.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
    "test_matched": "test_matched.tsv",
    "test_mismatched": "test_mismatched.tsv",
}


def get_task(name):
    if name not in TASKS:
        raise UsageError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)}")
    return TASKS[name]
