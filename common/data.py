"""GLUE data: loading (the hub or GLUE's own TSV files), tokenising, batching, the loaders.

Unlabeled test rows get label -1. Every row carries `idx`, its position in its file: the key that puts predictions back
in order, whatever the file's own index column says."""

import csv
import hashlib
import io
import json
import math
import os
import re
import sys

import torch

from common.errors import UsageError, raise_on_every_rank
from common.tasks import TSV_FILES, Task, get_task

# The validation set's name among the eval loaders (--validation_size, --validation_dev_half).
HELD_OUT = "heldout"
DEV_HALF_SEED = 0  # --validation_dev_half: the same halves for every run, whatever its --seed


def read_text(path):
    """A file's text (UTF-8, a byte-order mark dropped); a UsageError naming the line of a byte that is not UTF-8, or
    why the file cannot be read."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror}); pass a file you can read") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UsageError(
            f"{path}, line {line}: byte 0x{data[e.start]:02x} is not UTF-8; save the file as UTF-8"
        ) from None


def read_tsv(task, path, labeled=True):
    """One GLUE TSV file as a dict of hub-style columns: the texts, label, idx (the row's position in the file, 0..n-1:
    the key the scripts use) and index (the file's own index column, written back in prediction files; the position
    when there is none). `labeled`: the file must hold a valid label on every row (train and dev); test files have none
    (label -1).

    GLUE's files hold bare double quotes, so they are read with quoting off. CoLA's train/dev have no header (a first
    row naming a "sentence" column is one); MRPC's header starts with a byte-order mark. Anything else that does not
    fit (a row with another number of fields, a label outside the task's set, an empty file, bytes that are not UTF-8)
    is a UsageError naming the file and the line."""
    task = get_task(task)
    csv.field_size_limit(sys.maxsize)
    text = io.StringIO(read_text(path), newline="")
    rows = [(n, r) for n, r in enumerate(csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE), 1) if r]
    if not rows:
        raise UsageError(f"{path} is empty; it must hold GLUE's {task.tsv_dir} rows")
    header = [h.strip() for h in rows[0][1]]
    # CoLA: source, label, original label, sentence
    positional = isinstance(task.tsv_columns[0], int)
    if positional and "sentence" not in header:
        columns, body, width = task.tsv_columns, rows, 4
    else:
        names = ("sentence", "label") if positional else task.tsv_columns
        twice(header, path)
        if not set(names[:-1]) <= set(header):
            raise UsageError(
                f"{path}, line 1: expected a header with the columns {', '.join(names[:-1])}, found {header[:6]}"
            )
        columns, body, width = ([header.index(n) if n in header else None for n in names], rows[1:], len(header))
    if not body:
        raise UsageError(f"{path} has no rows after its header")
    for line, row in body:
        if len(row) != width:
            raise UsageError(
                f"{path}, line {line}: {len(row)} fields where the header has {width} (a tab inside a text?)"
            )
    out = {key: [r[c] for _, r in body] for key, c in zip(task.text_keys, columns)}
    for key, c in zip(task.text_keys, columns):
        for line, row in body:
            not_empty(row[c], key, path, line)
    if columns[-1] is None and labeled:
        raise UsageError(f"{path}: no label column ('{task.tsv_columns[-1]}'); a train or dev file needs one")
    out["label"] = [
        _label(task, r[columns[-1]], path, line) if labeled else (-1.0 if task.is_regression else -1)
        for line, r in body
    ]
    idx_col = header.index("index") if "index" in header else None
    out["idx"] = list(range(len(body)))
    out["index"] = [i if idx_col is None else _index(r[idx_col], path, line) for i, (line, r) in enumerate(body)]
    if not labeled and len(set(out["index"])) < len(body):  # a test file's ids name the rows of a submission
        first = {}
        for (line, _), index in zip(body, out["index"]):
            if first.setdefault(index, line) != line:
                raise UsageError(f"{path}, line {line}: index {index} is also on line {first[index]}; ids must differ")
    return out


def _label(task, raw, path, line):
    """A label in the hub's encoding: the class id (from its name or number), or STS-B's score."""
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
    # CoLA, SST-2, MRPC, QQP, WNLI store the id
    if raw.strip().isascii() and raw.strip().isdecimal() and int(raw) < task.num_labels:
        return int(raw)
    raise UsageError(
        f"{path}, line {line}: label '{raw}' is not one of {', '.join(task.label_names)} (or 0-{task.num_labels - 1})"
    )


def _index(raw, path, line):
    if not (raw.strip().isascii() and raw.strip().isdecimal()):
        raise UsageError(f"{path}, line {line}: the index column holds '{raw[:40]}', not a row number")
    return int(raw)


def unique(pairs, path, line):
    """A JSON object's {key: value}; a key written twice is refused (json keeps the last, silently)."""
    keys = [k for k, _ in pairs]
    for i, k in enumerate(keys):
        if k in keys[:i]:
            raise UsageError(f"{path}, line {line}: the object names '{k}' twice; keep one")
    return dict(pairs)


def twice(header, path):
    """Refuse a header that names a column twice (which of the two would be read?)."""
    seen = [h for i, h in enumerate(header) if h in header[:i]]
    if seen:
        raise UsageError(f"{path}, line 1: the header names the column '{seen[0]}' twice; rename one")


def not_empty(text, key, path, line):
    """Refuse a text that is empty once stripped: the model would read nothing but the special tokens."""
    if not isinstance(text, str):
        raise UsageError(f"{path}, line {line}: the {key} column holds {json.dumps(text)[:40]}, not a text; quote it")
    if not text.strip():
        raise UsageError(f"{path}, line {line}: the {key} text is empty; remove the row or give it a text")


def read_rows(path):
    """Your own file as [(line, {column: text})]: CSV (.csv: quoted as spreadsheets write it), TSV (.tsv: no quoting,
    as GLUE's) or JSON lines (.jsonl, .json: an object a line). Text that does not fit is a UsageError naming the
    line."""
    csv.field_size_limit(sys.maxsize)
    kind = os.path.splitext(path)[1].lower()
    if kind not in (".csv", ".tsv", ".jsonl", ".json"):
        raise UsageError(f"{path}: pass a .csv, .tsv or .jsonl file (one row a line)")
    text = read_text(path)
    if kind in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            try:
                row = (
                    json.loads(line, object_pairs_hook=lambda pairs: unique(pairs, path, n)) if line.strip() else None
                )
            except (ValueError, RecursionError):
                row = []
            if row is not None and not isinstance(row, dict):
                raise UsageError(f"{path}, line {n}: not a JSON object of columns (one object a line)")
            rows += [(n, row)] if row is not None else []
    else:
        reader = csv.reader(
            io.StringIO(text, newline=""), **({"delimiter": "\t", "quoting": csv.QUOTE_NONE} if kind == ".tsv" else {})
        )
        lines = [(reader.line_num, r) for r in reader if r]
        header, width = lines[0][1] if lines else [], len(lines[0][1]) if lines else 0
        twice(header, path)
        for n, r in lines[1:]:
            if len(r) != width:
                raise UsageError(f"{path}, line {n}: {len(r)} fields where the header has {width}")
        rows = [(n, dict(zip(header, r))) for n, r in lines[1:]]
    if not rows:
        raise UsageError(f"{path} has no rows")
    return rows


def load_task(
    task=None, train_file=None, validation_file=None, test_file=None, text_columns=None, label_column="label"
):
    """The run's Task: GLUE's `task`, or your own data's, read from its files (file_task)."""
    if task:
        return get_task(task)
    return file_task(train_file, validation_file, test_file, text_columns, label_column)


# How a label is written decides what it is: a whole number (a class id), a number with a point or an exponent (a
# score: a regression), or text (a class name). docs/data.md states the rule.
WHOLE, SCORE = re.compile(r"[-+]?[0-9]+"), re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?")


def label_kind(label):
    """'whole number', 'score' or 'text', by how `label` (a stripped string) is written."""
    return "whole number" if WHOLE.fullmatch(label) else "score" if SCORE.fullmatch(label) else "text"


def file_task(train_file, validation_file, test_file=None, text_columns=None, label_column="label"):
    """The Task of your own data: its text columns (`text_columns`, a or a,b; by default sentence, or sentence1 and
    sentence2, as transformers' run_glue reads them) and its labels, read from the training file. Every label whole
    numbers: classes, in numeric order; every label text: classes, in sorted order; every label a number written with
    a point or an exponent (0.5, 1.0, .5, 2e-1): scores, a regression (its metric Pearson). A column that mixes these
    kinds (whole numbers and one 1.0, numbers and nan or text) is refused with the rows that disagree."""
    rows = read_rows(train_file)
    columns = rows[0][1].keys()
    texts = tuple(text_columns.split(",")) if text_columns else None
    if texts is None:
        texts = ("sentence1", "sentence2") if {"sentence1", "sentence2"} <= columns else ("sentence",)
    for line, row in rows:
        missing = [c for c in (*texts, label_column) if row.get(c) is None]
        if missing:
            hint = " (name them with --text_columns and --label_column)" if line == rows[0][0] else ""
            raise UsageError(f"{train_file}, line {line}: no {missing[0]} column, or it is empty{hint}")
        if not str(row[label_column]).strip():
            raise UsageError(f"{train_file}, line {line}: the label is empty; give every row its label")
    labels = [(line, str(row[label_column]).strip()) for line, row in rows]
    kinds = {}
    for line, label in labels:
        kinds.setdefault(label_kind(label), []).append((line, label))
    if len(kinds) > 1:
        most = max(kinds, key=lambda k: len(kinds[k]))
        other = min(kinds, key=lambda k: len(kinds[k]))
        shown = ", ".join(f"line {line}: '{label}'" for line, label in kinds[other][:5])
        raise UsageError(
            f"{train_file}: the {label_column} column mixes {len(kinds[most])} labels written as a {most} with "
            f"{len(kinds[other])} written as a {other} ({shown}); write every class as a whole number or as text, "
            "or every score with a point (5 -> 5.0) for a regression (docs/data.md)"
        )
    if "score" in kinds:
        names, metric = (), "pearson"  # scores: a regression
    else:
        distinct = {label for _, label in labels}
        names, metric = tuple(sorted(distinct, key=int) if "whole number" in kinds else sorted(distinct)), "accuracy"
        if len(names) < 2:
            raise UsageError(f"{train_file} holds one label only ({names[0]}): a classifier needs two or more")
    files = [("train", train_file), ("validation", validation_file)] + [("test", test_file)] * bool(test_file)
    return Task("files", texts, names, metric, "test", (), files=tuple(files), label_column=label_column)


def read_table(task, path, split):
    """One file of your own data as columns, as read_tsv gives GLUE's: the texts, label (the class's id; the score
    of a regression; -1 in a test file, which needs none), idx and index (the row's position)."""
    rows = read_rows(path)
    out = {key: [] for key in (*task.text_keys, "label", "idx", "index")}
    indexed = any("index" in row for _, row in rows)  # the file's own ids
    for i, (line, row) in enumerate(rows):
        for key in task.text_keys:
            if row.get(key) is None:
                raise UsageError(f"{path}, line {line}: no {key} column")
            not_empty(row[key], key, path, line)
            out[key].append(row[key])
        raw = str(row.get(task.label_column, "")).strip()
        if split == "test":
            label = -1.0 if task.is_regression else -1
        elif task.is_regression:
            label = _number(raw, path, line)
        elif raw in task.label_names:
            label = task.label_names.index(raw)
        else:
            shown = ", ".join(task.label_names)
            raise UsageError(f"{path}, line {line}: label '{raw}' is not one of the training file's ({shown})")
        out["label"].append(label)
        out["idx"].append(i)
        out["index"].append(str(row.get("index", i)) if indexed else i)  # (written back in a test's predictions)
    if split == "test" and indexed and len(set(out["index"])) < len(rows):
        seen = {}
        for (line, _), index in zip(rows, out["index"]):
            if seen.setdefault(index, line) != line:
                raise UsageError(f"{path}, line {line}: index {index} is also on line {seen[index]}; ids must differ")
    return out


def _number(raw, path, line):
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UsageError(f"{path}, line {line}: the score must be a number, got '{raw}'")
    return value


def load_glue(task, data_dir=None):
    """A dict split -> datasets.Dataset with hub columns: train, the task's eval splits, and its test split(s) when
    present. From `data_dir` (GLUE's TSV layout) or from the hub; your own data from its files."""
    import datasets

    task = get_task(task)
    if task.files:
        return {split: datasets.Dataset.from_dict(read_table(task, path, split)) for split, path in task.files}
    splits = ("train",) + task.eval_splits + task.test_splits
    if data_dir is None:
        try:
            hub = datasets.load_dataset("nyu-mll/glue", task.name)
        except Exception as e:  # offline, no cache, hub down
            raise UsageError(
                f"cannot load GLUE '{task.name}' from the hub ({type(e).__name__}: "
                f"{_first_line(e)}); "
                f"pass --data_dir DIR holding GLUE's TSV files (DIR/{task.tsv_dir}/train.tsv, ...)"
            )
        # The hub's idx column is GLUE's index; idx becomes the row's position, as in the TSVs.
        return {
            s: hub[s].rename_column("idx", "index").add_column("idx", list(range(len(hub[s]))))
            for s in splits
            if s in hub
        }
    out = {}
    for split in splits:
        path = os.path.join(data_dir, task.tsv_dir, TSV_FILES[split])
        if os.path.exists(path):
            out[split] = datasets.Dataset.from_dict(read_tsv(task, path, labeled=split not in task.test_splits))
        elif split in ("train", task.eval_splits[0]):
            dev = TSV_FILES[task.eval_splits[0]]
            raise UsageError(
                f"missing {path}: --data_dir must hold GLUE's TSV layout "
                f"({task.tsv_dir}/{TSV_FILES['train']} and {task.tsv_dir}/{dev})"
            )
    return out


def fingerprint(datasets):
    """A hash of the rows of `datasets` (their token ids and labels, in order): the data a run trained and chose on,
    part of its identity."""
    h = hashlib.sha256()
    for dataset in datasets:
        for rows in dataset.iter(batch_size=4096):
            h.update(json.dumps([rows["input_ids"], rows["label"]]).encode())
    return h.hexdigest()[:16]


def hold_out(dataset, n, seed):
    """Split a dataset in two: the n rows drawn with `seed`, and the others (each in file order)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return dataset.select(sorted(order[n:])), dataset.select(sorted(order[:n]))


def _first_line(e):
    return (str(e).strip().splitlines() or [""])[0][:200]


def tokenize(dataset, task, tokenizer, max_length):
    """Token ids (truncated to max_length, not padded) plus label and idx.

    A text is first cut to 100 (max_length + 1) characters: the tokens kept are the same (no vocabulary we know has a
    token of 100 characters), and the tokenizer's memory stays bounded whatever the input (truncating a long pair costs
    it memory that grows with the square of the length: 23 GB for a pair of 15k and 12k words)."""
    keys = get_task(task).text_keys
    chars = 100 * (max_length + 1)

    def encode(batch):
        enc = tokenizer(*[[t[:chars] for t in batch[k]] for k in keys], truncation=True, max_length=max_length)
        return {
            "input_ids": enc["input_ids"],
            "attention_mask": enc["attention_mask"],
            **({"token_type_ids": enc["token_type_ids"]} if "token_type_ids" in enc else {}),
        }

    keep = ["label", "idx", "index"]
    return dataset.map(encode, batched=True, remove_columns=[c for c in dataset.column_names if c not in keep])


def positions(attention_mask):
    """Position ids counted from the attention mask: 0 at each row's first real token, whatever the padding side (the
    pads before it get 0 too; they are masked)."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Row indices in a new random order each epoch, grouped by length (transformers' Trainer does the same with
    group_by_length): shuffled, cut into groups of `group` batches, each group sorted longest first. A batch then holds
    rows of similar lengths, so it carries little padding, and every row still comes exactly once per epoch. set_epoch
    reseeds it (the loops call it)."""

    def __init__(self, lengths, batch_size, seed, group=50):
        self.lengths, self.size, self.seed, self.epoch = lengths, group * batch_size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        groups = [
            sorted(order[i : i + self.size].tolist(), key=lambda j: -self.lengths[j])
            for i in range(0, len(order), self.size)
        ]
        return iter([j for g in groups for j in g])


class Collator:
    """Dynamic padding to the longest row of the batch (rounded up to a multiple of `pad_to_multiple_of`: tensor cores
    like multiples of 8; or to the first of `lengths` that holds it: a compiled model then meets a few shapes only), on
    the tokenizer's padding side.

    Position ids are computed from the attention mask, so a row's positions start at 0 at its first real token whatever
    the padding side; with `positions=False` the model's own are used (for models whose forward takes no position_ids).
    """

    def __init__(self, pad_token_id, padding_side="right", positions=True, pad_to_multiple_of=1, lengths=None):
        self.pad_token_id, self.padding_side, self.positions = pad_token_id, padding_side, positions
        self.multiple, self.lengths = pad_to_multiple_of, lengths

    def __call__(self, rows):
        width = max(len(r["input_ids"]) for r in rows)
        width = -(-width // self.multiple) * self.multiple
        width = next((n for n in self.lengths if n >= width), width) if self.lengths else width
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
            batch["position_ids"] = positions(batch["attention_mask"])
        label_dtype = torch.float if isinstance(rows[0]["label"], float) else torch.long
        batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=label_dtype)
        batch["idx"] = torch.tensor([r["idx"] for r in rows])
        return batch


def load_data(
    accelerator,
    task=None,
    *,
    data_dir=None,
    train_file=None,
    validation_file=None,
    test_file=None,
    text_columns=None,
    label_column="label",
    max_train_samples=None,
    max_eval_samples=None,
    validation_size=None,
    validation_dev_half=False,
    seed=42,
    do_predict=False,
):
    """The run's Task and its splits (datasets of texts and labels), every file read, cut and checked before the model
    loads, so that bad data is refused in seconds; prints what was read. The keywords are the flags of the same names:
    GLUE's `task` from `data_dir` or the hub, or your own files; the rows kept, the validation set (HELD_OUT)."""
    error = None
    with accelerator.main_process_first():  # the hub's download once; then the others read its cache
        try:
            task = load_task(task, train_file, validation_file, test_file, text_columns, label_column)
            raw = load_glue(task, data_dir)
            raw = choose_rows(
                raw, task, max_train_samples, max_eval_samples, validation_size, validation_dev_half, seed
            )
            if do_predict and not any(s in raw for s in task.test_splits):
                where = "pass --test_file" if task.files else f"put {task.tsv_dir}/test.tsv under --data_dir"
                raise UsageError(f"--do_predict labels the unlabeled test split, and there is none: {where}")
        except UsageError as e:  # kept, not raised here: the main process would skip the others' barrier
            error = str(e)
    raise_on_every_rank(accelerator, error)  # every rank leaves with the same one line
    rows = ", ".join(f"{len(d):,} {split}" for split, d in raw.items())
    kind = f"a regression ({task.metric})" if task.is_regression else f"{task.num_labels} classes"
    labels = f": {', '.join(task.label_names)}" if task.files and not task.is_regression else ""
    accelerator.print(f"{'your data' if task.files else task.name}: {kind}{labels}; rows {rows}")
    return task, raw


def choose_rows(raw, task, max_train_samples, max_eval_samples, validation_size, validation_dev_half, seed):
    """The splits `raw` cut as the flags choose: the first rows kept, the validation set held out."""
    if max_train_samples is not None:
        raw["train"] = raw["train"].select(range(min(max_train_samples, len(raw["train"]))))
    for split in task.eval_splits:
        if split in raw and max_eval_samples is not None:
            raw[split] = raw[split].select(range(min(max_eval_samples, len(raw[split]))))
    if validation_size is not None:  # never trained on: gone from train before any batch is drawn
        if validation_size >= len(raw["train"]):
            raise UsageError(
                f"--validation_size {validation_size} leaves nothing to train on: the "
                f"training set has {len(raw['train'])} rows; hold out fewer"
            )
        raw["train"], raw[HELD_OUT] = hold_out(raw["train"], validation_size, seed)
    elif validation_dev_half:
        dev = task.eval_splits[0]
        if len(raw[dev]) < 2:
            raise UsageError(
                f"--validation_dev_half splits the {len(raw[dev])} dev row(s) in two halves; "
                "it needs "
                "at least 2 (raise --max_eval_samples)"
            )
        raw[dev], raw[HELD_OUT] = hold_out(raw[dev], len(raw[dev]) // 2, DEV_HALF_SEED)
    least = 2 if task.is_regression else 1  # a correlation needs two points
    for split in (*task.eval_splits, HELD_OUT):
        if split in raw and len(raw[split]) < least:
            name = "the validation set" if split == HELD_OUT else f"the {split} split"
            raise UsageError(
                f"{name} has {len(raw[split])} row(s); {task.name}'s {task.metric} needs at least "
                f"{least} (raise --max_eval_samples or --validation_size)"
            )
    return raw


def make_dataloaders(
    accelerator,
    tokenizer,
    splits,
    *,
    task,
    position_ids=True,
    max_length=128,
    per_device_train_batch_size=8,
    per_device_eval_batch_size=32,
    seed=42,
    group_by_length=False,
    pad_to_multiple_of=None,
    fixed_lengths=False,
    do_predict=False,
):
    """Train loader (shuffled) and one loader per eval split of `splits` (load_data's); test loaders with
    `do_predict`. The keywords are the flags of the same names.

    Each batch holds input_ids, attention_mask, labels, `idx` (the row's position in its file: the key that puts
    predictions back in file order, whatever the file's own index column says; not a model input) and, with
    `position_ids`, positions counted from the attention mask (so that left and right padding give the same logits).
    With --validation_size or --validation_dev_half the eval loaders include the validation set, named HELD_OUT."""
    from torch.utils.data import DataLoader

    with accelerator.main_process_first():  # (a hub dataset's map writes a cache file once)
        data = {s: tokenize(d, task, tokenizer, max_length) for s, d in splits.items()}
    spec = get_task(task)
    multiple = pad_to_multiple_of or (8 if torch.cuda.is_available() else 1)
    # --torch_compile: every batch padded to one of a few lengths (16, 32, 64, ... up to max_length), so that the model
    # is compiled for those shapes only
    lengths = sorted({min(2**k, max_length) for k in range(4, max_length.bit_length() + 1)}) if fixed_lengths else None
    collate = Collator(tokenizer.pad_token_id, tokenizer.padding_side, position_ids, multiple, lengths)
    # Loaders draw their seeds from their own generator, not from the global RNG that dropout uses:
    # a resumed run then sees the same dropout masks as an uninterrupted one. Pinned memory lets the
    # prepared loaders copy batches to the GPU without blocking (DataLoaderConfiguration's
    # non_blocking).
    pin = torch.cuda.is_available()
    order = {"shuffle": True, "generator": torch.Generator().manual_seed(seed)}
    if group_by_length:
        lengths = [len(x) for x in data["train"]["input_ids"]]
        order = {"sampler": LengthGroupedSampler(lengths, per_device_train_batch_size, seed)}
    train = DataLoader(
        data["train"], collate_fn=collate, batch_size=per_device_train_batch_size, pin_memory=pin, **order
    )
    names = [s for s in (*spec.eval_splits, HELD_OUT) if s in data]
    if do_predict:
        names += [s for s in spec.test_splits if s in data]
    evals = {
        s: DataLoader(
            data[s],
            collate_fn=collate,
            batch_size=per_device_eval_batch_size,
            generator=torch.Generator().manual_seed(seed),
            pin_memory=pin,
        )
        for s in names
    }
    return train, evals
