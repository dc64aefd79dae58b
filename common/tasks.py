"""The tasks: GLUE's (columns and label order of the hub dataset `nyu-mll/glue`, MNLI: entailment 0, neutral 1,
contradiction 2; STS-B a regression with one output), and your own files' (common.data.file_task)."""

from dataclasses import dataclass

from common.errors import UsageError


@dataclass(frozen=True)
class Task:
    name: str  # GLUE's (sst2, ...), or "files" for your own
    text_keys: tuple  # the column names of the one or two input texts
    label_names: tuple  # hub order; () for a regression
    metric: str  # the main metric: it picks the best weights and ends the final line
    tsv_dir: str  # the task's folder in GLUE's download layout
    tsv_columns: tuple  # its TSV header names of the texts, then of the label (CoLA: column numbers)
    eval_splits: tuple = ("validation",)
    test_splits: tuple = ("test",)
    files: tuple = ()  # your own data: (split, path) pairs; the label column's name
    label_column: str = "label"

    @property
    def num_labels(self):
        return len(self.label_names) or 1

    @property
    def is_regression(self):
        return not self.label_names


def glue(name, texts, labels, metric, tsv_dir, columns, evals="validation", tests="test"):
    """A GLUE Task from |-separated names."""
    names = [tuple(s.split("|")) if s else () for s in (texts, labels, columns, evals, tests)]
    return Task(name, *names[:2], metric, tsv_dir, *names[2:])


GLUE = (
    Task("cola", ("sentence",), ("unacceptable", "acceptable"), "matthews_correlation", "CoLA", (3, 1)),
    glue("sst2", "sentence", "negative|positive", "accuracy", "SST-2", "sentence|label"),
    glue("mrpc", "sentence1|sentence2", "not_equivalent|equivalent", "f1", "MRPC", "#1 String|#2 String|Quality"),
    glue("stsb", "sentence1|sentence2", "", "pearson", "STS-B", "sentence1|sentence2|score"),
    glue("qqp", "question1|question2", "not_duplicate|duplicate", "f1", "QQP", "question1|question2|is_duplicate"),
    glue("mnli", "premise|hypothesis", "entailment|neutral|contradiction", "accuracy", "MNLI",
         "sentence1|sentence2|gold_label", "validation_matched|validation_mismatched", "test_matched|test_mismatched"),
    glue("qnli", "question|sentence", "entailment|not_entailment", "accuracy", "QNLI", "question|sentence|label"),
    glue("rte", "sentence1|sentence2", "entailment|not_entailment", "accuracy", "RTE", "sentence1|sentence2|label"),
    glue("wnli", "sentence1|sentence2", "not_entailment|entailment", "accuracy", "WNLI", "sentence1|sentence2|label"),
)  # fmt: skip
TASKS = {task.name: task for task in GLUE}
SPLITS = {s for t in GLUE for s in ("train", *t.eval_splits, *t.test_splits)}
TSV_FILES = {s: s.replace("validation", "dev") + ".tsv" for s in SPLITS}  # GLUE's file of each split


def get_task(task):
    """The Task of a GLUE task's name (a Task is returned as it is)."""
    if not isinstance(task, Task) and task not in TASKS:
        raise UsageError(f"unknown task '{task}'; choose one of: {', '.join(TASKS)}")
    return task if isinstance(task, Task) else TASKS[task]
