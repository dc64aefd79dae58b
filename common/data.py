"""GLUE tasks: the task table, loading (hub or GLUE's own TSV files), tokenising and batching.

Labels follow the hub dataset `nyu-mll/glue` (for example MNLI: entailment 0, neutral 1,
contradiction 2); STS-B is a regression with one output. Unlabeled test rows get label -1.
"""
import csv
import math
import os
import sys
from dataclasses import dataclass

import torch

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
    "mrpc": Task(("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1", "MRPC",
                 ("#1 String", "#2 String", "Quality")),
    "stsb": Task(("sentence1", "sentence2"), (), "pearson", "STS-B", ("sentence1", "sentence2", "score")),
    "qqp": Task(("question1", "question2"), ("not_duplicate", "duplicate"), "f1", "QQP",
                ("question1", "question2", "is_duplicate")),
    "mnli": Task(("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "accuracy", "MNLI",
                 ("sentence1", "sentence2", "gold_label"),
                 ("validation_matched", "validation_mismatched"), ("test_matched", "test_mismatched")),
    "qnli": Task(("question", "sentence"), ("entailment", "not_entailment"), "accuracy", "QNLI",
                 ("question", "sentence", "label")),
    "rte": Task(("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy", "RTE",
                ("sentence1", "sentence2", "label")),
    "wnli": Task(("sentence1", "sentence2"), ("not_entailment", "entailment"), "accuracy", "WNLI",
                 ("sentence1", "sentence2", "label")),
}

# hub split name -> GLUE TSV file name
TSV_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv",
             "validation_matched": "dev_matched.tsv", "validation_mismatched": "dev_mismatched.tsv",
             "test_matched": "test_matched.tsv", "test_mismatched": "test_mismatched.tsv"}


def get_task(name):
    if name not in TASKS:
        raise UsageError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


def read_tsv(task_name, path, labeled=True):
    """One GLUE TSV file as a dict of hub-style columns: the texts, label, idx (the row's position in
    the file, 0..n-1: the key the scripts use) and index (the file's own index column, written back
    in prediction files; the position when there is none). `labeled`: the file
    must hold a valid label on every row (train and dev); test files have none (label -1).

    GLUE's files hold bare double quotes, so they are read with quoting off. CoLA's train/dev
    have no header (a first row naming a "sentence" column is one); MRPC's header starts with a
    byte-order mark. Anything else that does not fit (a row with another number of fields, a label
    outside the task's set, an empty file, bytes that are not UTF-8) is a UsageError naming the
    file and the line."""
    task = TASKS[task_name]
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            rows = [(n, r) for n, r in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), 1) if r]
    except UnicodeDecodeError as e:
        line = open(path, "rb").read()[:e.start].count(b"\n") + 1
        raise UsageError(f"{path}, line {line}: byte 0x{e.object[e.start]:02x} is not UTF-8; "
                         "save the file as UTF-8") from None
    if not rows:
        raise UsageError(f"{path} is empty; it must hold GLUE's {task.tsv_dir} rows")
    header = [h.strip() for h in rows[0][1]]
    positional = isinstance(task.tsv_columns[0], int)  # CoLA: source, label, original label, sentence
    if positional and "sentence" not in header:
        columns, body, width = task.tsv_columns, rows, 4
    else:
        names = ("sentence", "label") if positional else task.tsv_columns
        if not set(names[:-1]) <= set(header):
            raise UsageError(f"{path}, line 1: expected a header with the columns {', '.join(names[:-1])}, "
                             f"found {header[:6]}")
        columns, body, width = [header.index(n) if n in header else None for n in names], rows[1:], len(header)
    if not body:
        raise UsageError(f"{path} has no rows after its header")
    for line, row in body:
        if len(row) != width:
            raise UsageError(f"{path}, line {line}: {len(row)} fields where the header has {width} "
                             "(a tab inside a text?)")
    out = {key: [r[c] for _, r in body] for key, c in zip(task.text_keys, columns)}
    if columns[-1] is None and labeled:
        raise UsageError(f"{path}: no label column ('{task.tsv_columns[-1]}'); a train or dev file needs one")
    out["label"] = [_label(task, r[columns[-1]], path, line) if labeled else (-1.0 if task.is_regression else -1)
                    for line, r in body]
    idx_col = header.index("index") if "index" in header else None
    out["idx"] = list(range(len(body)))
    out["index"] = [i if idx_col is None else _index(r[idx_col], path, line) for i, (line, r) in enumerate(body)]
    return out


def _label(task, raw, path, line):
    """A label in the hub's encoding: the class id (from its name or its number), or STS-B's score."""
    if task.is_regression:
        try:
            score = float(raw)
        except ValueError:
            score = math.nan
        if not 0.0 <= score <= 5.0:  # also refuses nan and inf
            raise UsageError(f"{path}, line {line}: STS-B's score must be a number from 0 to 5, got '{raw}'")
        return score
    if raw in task.label_names:
        return task.label_names.index(raw)
    if raw.strip().isdigit() and int(raw) < task.num_labels:  # CoLA, SST-2, MRPC, QQP, WNLI store the id
        return int(raw)
    raise UsageError(f"{path}, line {line}: label '{raw}' is not one of {', '.join(task.label_names)} "
                     f"(or 0-{task.num_labels - 1})")


def _index(raw, path, line):
    if not raw.strip().isdigit():
        raise UsageError(f"{path}, line {line}: the index column holds '{raw[:40]}', not a row number")
    return int(raw)


def load_glue(task_name, data_dir=None):
    """A dict split -> datasets.Dataset with hub columns: train, the task's eval splits, and
    its test split(s) when present. From `data_dir` (GLUE's TSV layout) or from the hub."""
    import datasets

    task = get_task(task_name)
    splits = ("train",) + task.eval_splits + task.test_splits
    if data_dir is None:
        try:
            hub = datasets.load_dataset("nyu-mll/glue", task_name)
        except Exception as e:  # offline, no cache, hub down
            raise UsageError(f"cannot load GLUE '{task_name}' from the hub ({type(e).__name__}: {_first_line(e)}); "
                             f"pass --data_dir DIR holding GLUE's TSV files (DIR/{task.tsv_dir}/train.tsv, ...)")
        # The hub's idx column is GLUE's index; idx becomes the row's position, as for the TSV files.
        return {s: hub[s].rename_column("idx", "index").add_column("idx", list(range(len(hub[s]))))
                for s in splits if s in hub}
    out = {}
    for split in splits:
        path = os.path.join(data_dir, task.tsv_dir, TSV_FILES[split])
        if os.path.exists(path):
            out[split] = datasets.Dataset.from_dict(read_tsv(task_name, path, labeled=split not in task.test_splits))
        elif split in ("train", task.eval_splits[0]):
            dev = TSV_FILES[task.eval_splits[0]]
            raise UsageError(f"missing {path}: --data_dir must hold GLUE's TSV layout "
                             f"({task.tsv_dir}/{TSV_FILES['train']} and {task.tsv_dir}/{dev})")
    return out


def hold_out(dataset, n, seed):
    """Split a dataset in two: the n rows drawn with `seed`, and the others (each in file order)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return dataset.select(sorted(order[n:])), dataset.select(sorted(order[:n]))


def _first_line(e):
    return (str(e).strip().splitlines() or [""])[0][:200]


def tokenize(dataset, task_name, tokenizer, max_length):
    """Token ids (truncated to max_length, not padded) plus label and idx.

    A text is first cut to 100 (max_length + 1) characters: the tokens kept are the same (no
    vocabulary we know has a token of 100 characters), and the tokenizer's memory stays bounded
    whatever the input (truncating a long pair costs it memory that grows with the square of
    the length: 23 GB for a pair of 15k and 12k words)."""
    keys = TASKS[task_name].text_keys
    chars = 100 * (max_length + 1)

    def encode(batch):
        enc = tokenizer(*[[t[:chars] for t in batch[k]] for k in keys], truncation=True, max_length=max_length)
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                **({"token_type_ids": enc["token_type_ids"]} if "token_type_ids" in enc else {})}

    keep = ["label", "idx", "index"]
    return dataset.map(encode, batched=True, remove_columns=[c for c in dataset.column_names if c not in keep])


def pack_left(input_ids, attention_mask, token_type_ids=None):
    """Every row of a batch left-padded (pads first), whatever the collator did: the last position is
    then the last real token (where a decoder's classifier pools, given embeddings instead of ids)."""
    order = attention_mask.argsort(dim=-1, stable=True)
    token_type_ids = None if token_type_ids is None else token_type_ids.gather(1, order)
    return input_ids.gather(1, order), attention_mask.gather(1, order), token_type_ids


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Row indices in a new random order each epoch, grouped by length (transformers' Trainer does
    the same with group_by_length): shuffled, cut into groups of `group` batches, each group sorted
    longest first. A batch then holds rows of similar lengths, so it carries little padding, and
    every row still comes exactly once per epoch. set_epoch reseeds it (the loops call it)."""

    def __init__(self, lengths, batch_size, seed, group=50):
        self.lengths, self.size, self.seed, self.epoch = lengths, group * batch_size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        groups = [sorted(order[i:i + self.size].tolist(), key=lambda j: -self.lengths[j])
                  for i in range(0, len(order), self.size)]
        return iter([j for g in groups for j in g])


class Collator:
    """Dynamic padding to the longest row of the batch (rounded up to a multiple of
    `pad_to_multiple_of`: tensor cores like multiples of 8), on the tokenizer's padding side.

    Position ids are computed from the attention mask, so a row's positions start at 0 at its
    first real token whatever the padding side; with `positions=False` the model's own are used
    (for models whose forward takes no position_ids).
    """

    def __init__(self, pad_token_id, padding_side="right", positions=True, pad_to_multiple_of=1):
        self.pad_token_id, self.padding_side, self.positions = pad_token_id, padding_side, positions
        self.multiple = pad_to_multiple_of

    def __call__(self, rows):
        width = max(len(r["input_ids"]) for r in rows)
        width = -(-width // self.multiple) * self.multiple
        batch = {}
        for key, fill in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key not in rows[0]:
                continue
            padded = []
            for r in rows:
                pad = [fill] * (width - len(r[key]))
                padded.append(r[key] + pad if self.padding_side == "right" else pad + r[key])
            batch[key] = torch.tensor(padded)
        if self.positions:
            batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        label_dtype = torch.float if isinstance(rows[0]["label"], float) else torch.long
        batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=label_dtype)
        batch["idx"] = torch.tensor([r["idx"] for r in rows])
        return batch
