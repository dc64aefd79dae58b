"""GLUE's data (the hub's or GLUE's TSV files) or your own files: read, checked, tokenised, batched. Every row carries
`idx`, its position in its file (the key that orders predictions, whatever an index column says); test labels: -1."""

import csv
import hashlib
import io
import json
import math
import os
import re
import sys

import torch

from common.errors import UsageError, first_line, raise_on_every_rank
from common.tasks import TSV_FILES, Task, get_task

HELD_OUT = "heldout"  # the validation set's name among the eval loaders (--validation_size, --validation_dev_half)
# How a label of your own data is written decides what it is (docs/data.md): a whole number (a class id), a number
# with a point or an exponent (a score: a regression), or text (a class name).
WHOLE, SCORE = re.compile(r"[-+]?[0-9]+"), re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+|[0-9]+)([eE][-+]?[0-9]+)?")


def bad_line(path, line, why):
    return UsageError(f"{path}, line {line}: {why}")


def read_text(path):
    """A file's text (UTF-8, a byte-order mark dropped)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"cannot read {path} ({e.strerror}); pass a file you can read") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise bad_line(path, line, f"byte 0x{data[e.start]:02x} is not UTF-8; save the file as UTF-8") from None


def read_lines(path, tsv):
    """[(line, fields)] of a CSV file, or of a TSV file with quoting off (GLUE's texts hold bare double quotes)."""
    csv.field_size_limit(sys.maxsize)
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if tsv else {}
    reader = csv.reader(io.StringIO(read_text(path), newline=""), **options)
    return [(reader.line_num, fields) for fields in reader if fields]


def named_once(names, path, line, message):
    """Refuse a column named twice (which of the two would be read?); `message` shows the name."""
    if twice := [name for i, name in enumerate(names) if name in names[:i]]:
        raise bad_line(path, line, message.format(twice[0]))


def as_rows(path, header, lines, hint=""):
    named_once(header, path, 1, "the header names the column '{}' twice; rename one")
    for line, fields in lines:
        if len(fields) != len(header):
            raise bad_line(path, line, f"{len(fields)} fields where the header has {len(header)}{hint}")
    return [(line, dict(zip(header, fields))) for line, fields in lines]


def read_tsv(task, path, labeled=True):
    """One GLUE TSV file as hub-style columns (to_columns); a test file (`labeled` False) holds no label."""
    task, lines = get_task(task), read_lines(path, tsv=True)
    if not lines:
        raise UsageError(f"{path} is empty; it must hold GLUE's {task.tsv_dir} rows")
    header = [name.strip() for name in lines[0][1]]
    positional = isinstance(task.tsv_columns[0], int)  # CoLA: source, label, original label, sentence
    if positional and "sentence" not in header:  # (CoLA's train and dev have no header)
        columns, header = task.tsv_columns, [0, 1, 2, 3]
    else:
        columns, lines = ("sentence", "label") if positional else task.tsv_columns, lines[1:]
    rows = as_rows(path, header, lines, " (a tab inside a text?)")
    if not set(columns[:-1]) <= set(header):
        raise bad_line(path, 1, f"expected a header with the columns {', '.join(columns[:-1])}, found {header[:6]}")
    if not rows:
        raise UsageError(f"{path} has no rows after its header")
    if labeled and columns[-1] not in header:
        raise UsageError(f"{path}: no label column ('{task.tsv_columns[-1]}'); a train or dev file needs one")
    return to_columns(task, path, rows, columns, labeled)


def read_rows(path):
    """Your own file as [(line, {column: value})]: CSV (.csv: quoted as spreadsheets write it), TSV (.tsv: no quoting,
    as GLUE's) or JSON lines (.jsonl, .json: an object a line)."""
    kind = os.path.splitext(path)[1].lower()
    if kind not in (".csv", ".tsv", ".jsonl", ".json"):
        raise UsageError(f"{path}: pass a .csv, .tsv or .jsonl file (one row a line)")
    if kind in (".csv", ".tsv"):
        lines = read_lines(path, tsv=kind == ".tsv")
        rows = as_rows(path, lines[0][1] if lines else [], lines[1:])
    else:
        rows = []
        for n, line in enumerate(re.split("\r\n?|\n", read_text(path)), 1):  # (not splitlines: U+2028 in a text)
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=lambda pairs: unique(pairs, path, n))
            except (ValueError, RecursionError):
                row = None
            if not isinstance(row, dict):
                raise bad_line(path, n, "not a JSON object of columns (one object a line)")
            rows.append((n, row))
    if not rows:
        raise UsageError(f"{path} has no rows")
    return rows


def unique(pairs, path, line):
    """A JSON object's {key: value}, refused when it names a key twice (json keeps the last, silently)."""
    named_once([key for key, _ in pairs], path, line, "the object names '{}' twice; keep one")
    return dict(pairs)


def to_columns(task, path, rows, columns, labeled):
    """`rows` as the hub's columns, read from `columns` (the texts', then the label's): the texts, label (-1 unless
    `labeled`), idx (the row's position) and index (the file's own index column, written back in prediction files)."""
    out = {key: [] for key in (*task.text_keys, "label", "idx", "index")}
    indexed, seen = any("index" in row for _, row in rows), {}
    for i, (line, row) in enumerate(rows):
        for key, column in zip(task.text_keys, columns):
            text = row.get(column)
            if text is None:
                raise bad_line(path, line, f"no {key} column")
            if not isinstance(text, str):
                raise bad_line(path, line, f"the {key} column holds {json.dumps(text)[:40]}, not a text; quote it")
            if not text.strip():  # the model would read nothing but the special tokens
                raise bad_line(path, line, f"the {key} text is empty; remove the row or give it a text")
            out[key].append(text)
        unlabeled = -1.0 if task.is_regression else -1
        out["label"].append(parse_label(task, row.get(columns[-1], ""), path, line) if labeled else unlabeled)
        if not indexed:
            index = i
        elif task.files:
            index = str(row.get("index", i))
        elif re.fullmatch("[0-9]+", row["index"].strip()):
            index = int(row["index"])
        else:
            raise bad_line(path, line, f"the index column holds '{row['index'][:40]}', not a row number")
        if not labeled and seen.setdefault(index, line) != line:  # a test file's ids name a submission's rows
            raise bad_line(path, line, f"index {index} is also on line {seen[index]}; ids must differ")
        out["idx"].append(i)
        out["index"].append(index)
    return out


def parse_label(task, raw, path, line):
    """A label in the hub's encoding: the class's id (GLUE's files may write the id, not the name), or the score."""
    if task.files:  # your own data: the label as text (JSON's 1 is "1"; a list is no label)
        raw = "" if isinstance(raw, (list, dict)) else str(raw).strip()
    if task.is_regression:
        try:
            score = float(raw) if not task.files or SCORE.fullmatch(raw) else math.nan  # (float() reads 1_0 as 10)
        except ValueError:
            score = math.nan
        if task.files and not math.isfinite(score):
            raise bad_line(path, line, f"the score must be a number, got '{raw}'")
        if not task.files and not 0.0 <= score <= 5.0:  # also refuses nan and inf
            raise bad_line(path, line, f"STS-B's score must be a number from 0 to 5, got '{raw}'")
        return score
    names = ", ".join(task.label_names)
    if raw in task.label_names:
        return task.label_names.index(raw)
    if task.files:
        raise bad_line(path, line, f"label '{raw}' is not one of the training file's ({names})")
    if re.fullmatch("[0-9]+", raw.strip()) and int(raw) < task.num_labels:  # CoLA, SST-2, MRPC, QQP, WNLI store the id
        return int(raw)
    raise bad_line(path, line, f"label '{raw}' is not one of {names} (or 0-{task.num_labels - 1})")


def file_task(train_file, validation_file, test_file=None, text_columns=None, label_column="label"):
    """The Task of your own data, read from the training file: its text columns (by default sentence, or sentence1 and
    sentence2, as transformers' run_glue reads them) and its labels, all of one kind (WHOLE, SCORE or text)."""
    rows = read_rows(train_file)
    default = ("sentence1", "sentence2") if {"sentence1", "sentence2"} <= rows[0][1].keys() else ("sentence",)
    texts = tuple(text_columns.split(",")) if text_columns else default
    kinds = {}  # kind -> [(line, label)]
    for line, row in rows:
        if missing := [c for c in (*texts, label_column) if row.get(c) is None]:
            hint = " (name them with --text_columns and --label_column)" if line == rows[0][0] else ""
            raise bad_line(train_file, line, f"no {missing[0]} column, or it is empty{hint}")
        label = "" if isinstance(row[label_column], (list, dict)) else str(row[label_column]).strip()
        if not label or re.search("[\t\r\n]", label):  # (a tab would split the predictions file's columns)
            why = "the label is empty, or holds a tab or line break, or is a JSON list or object"
            raise bad_line(train_file, line, f"{why}: give each row one label")
        kind = "whole number" if WHOLE.fullmatch(label) else "score" if SCORE.fullmatch(label) else "text"
        kinds.setdefault(kind, []).append((line, label))
    if len(kinds) > 1:
        most, other = sorted(kinds, key=lambda k: len(kinds[k]), reverse=True)[:2]  # (a tie: the first kind read)
        shown = ", ".join(f"line {line}: '{label}'" for line, label in kinds[other][:5])
        fix = "write every class as a whole number or as text, or every score with a point (5 -> 5.0) for a regression"
        message = f"{train_file}: the {label_column} column mixes {len(kinds[most])} labels written as a {most} with "
        raise UsageError(message + f"{len(kinds[other])} written as a {other} ({shown}); {fix} (docs/data.md)")
    names, metric = (), "pearson"  # scores: a regression
    if "score" not in kinds:  # classes, in numeric or sorted order
        distinct = {label for pairs in kinds.values() for _, label in pairs}
        names, metric = tuple(sorted(sorted(distinct), key=int if "whole number" in kinds else None)), "accuracy"
        if len(names) < 2:
            raise UsageError(f"{train_file} holds one label only ({names[0]}): a classifier needs two or more")
        if twins := [f"'{a}' and '{b}'" for a, b in zip(names, names[1:]) if "text" not in kinds and int(a) == int(b)]:
            raise UsageError(f"{train_file}: the labels {twins[0]} name one number; write each class one way")
    files = [("train", train_file), ("validation", validation_file)] + [("test", test_file)] * bool(test_file)
    return Task("files", texts, names, metric, "test", (), files=tuple(files), label_column=label_column)


def load_glue(task, data_dir=None):
    """{split: datasets.Dataset} with the hub's columns: train, the eval splits, and the test split(s) when present.
    From `data_dir` (GLUE's TSV layout) or from the hub; your own data from its files."""
    from datasets import Dataset, load_dataset

    task = get_task(task)
    if task.files:
        columns = (*task.text_keys, task.label_column)
        return {s: Dataset.from_dict(to_columns(task, f, read_rows(f), columns, s != "test")) for s, f in task.files}
    splits = ("train",) + task.eval_splits + task.test_splits
    if data_dir is None:
        try:
            hub = load_dataset("nyu-mll/glue", task.name)
        except Exception as e:  # offline, no cache, hub down
            why = f"{type(e).__name__}: {first_line(e, 200)}"
            fix = f"pass --data_dir DIR holding GLUE's TSV files (DIR/{task.tsv_dir}/train.tsv, ...)"
            raise UsageError(f"cannot load GLUE '{task.name}' from the hub ({why}); {fix}")
        # The hub's idx column is GLUE's index; idx becomes the row's position, as in the TSVs.
        renamed = {s: hub[s].rename_column("idx", "index") for s in splits if s in hub}
        return {s: d.add_column("idx", list(range(len(d)))) for s, d in renamed.items()}
    out = {}
    for split in splits:
        path = os.path.join(data_dir, task.tsv_dir, TSV_FILES[split])
        if os.path.exists(path):
            out[split] = Dataset.from_dict(read_tsv(task, path, labeled=split not in task.test_splits))
        elif split in ("train", task.eval_splits[0]):
            layout = f"{task.tsv_dir}/{TSV_FILES['train']} and {task.tsv_dir}/{TSV_FILES[task.eval_splits[0]]}"
            raise UsageError(f"missing {path}: --data_dir must hold GLUE's TSV layout ({layout})")
    return out


def fingerprint(datasets):
    """A hash of the rows' token ids and labels, in order: the data a run trained and chose on."""
    h = hashlib.sha256()
    for dataset in datasets:
        for rows in dataset.iter(batch_size=4096):
            h.update(json.dumps([rows["input_ids"], rows["label"]]).encode())
    return h.hexdigest()[:16]


def hold_out(dataset, n, seed):
    """Split a dataset in two: the n rows drawn with `seed`, and the others (each in file order)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    return dataset.select(sorted(order[n:])), dataset.select(sorted(order[:n]))


def tokenize(dataset, task, tokenizer, max_length):
    """Token ids (truncated to max_length, not padded), with label, idx and index. Texts are cut to 100 characters a
    token first (no vocabulary we know has a longer token: the tokens kept are the same), so the tokenizer's memory
    stays bounded (truncating a pair of 15k and 12k words took 23 GB)."""
    keys, chars = get_task(task).text_keys, 100 * (max_length + 1)

    def encode(batch):
        enc = tokenizer(*[[t[:chars] for t in batch[k]] for k in keys], truncation=True, max_length=max_length)
        return {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}

    keep = ["label", "idx", "index"]
    return dataset.map(encode, batched=True, remove_columns=[c for c in dataset.column_names if c not in keep])


def positions(attention_mask):
    """Position ids counted from the attention mask: 0 at each row's first real token, whatever the padding side."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Row indices shuffled anew each epoch (set_epoch), then sorted by length within groups of `group` batches, as
    transformers' group_by_length: a batch carries little padding, and every row still comes once an epoch."""

    def __init__(self, lengths, batch_size, seed, group=50):
        self.lengths, self.size, self.seed, self.epoch = lengths, group * batch_size, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        order = torch.randperm(len(self.lengths), generator=torch.Generator().manual_seed(self.seed + self.epoch))
        groups = (order[i : i + self.size].tolist() for i in range(0, len(order), self.size))
        return iter([j for group in groups for j in sorted(group, key=lambda j: -self.lengths[j])])


class Collator:
    """Pads a batch to its longest row on the tokenizer's side, rounded up to a multiple of `pad_to_multiple_of` (8 for
    tensor cores) or to the first of `lengths` holding it (few shapes to compile); `positions`: ids from the mask."""

    def __init__(self, pad_token_id, padding_side="right", positions=True, pad_to_multiple_of=1, lengths=None):
        self.pad_token_id, self.padding_side, self.positions = pad_token_id, padding_side, positions
        self.multiple, self.lengths = pad_to_multiple_of, lengths

    def __call__(self, rows):
        width = -(-max(len(r["input_ids"]) for r in rows) // self.multiple) * self.multiple
        width = next((n for n in self.lengths if n >= width), width) if self.lengths else width
        right, batch = self.padding_side == "right", {}
        for key, fill in (("input_ids", self.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in rows[0]:
                pads = ([fill] * (width - len(r[key])) for r in rows)
                batch[key] = torch.tensor([r[key] + pad if right else pad + r[key] for r, pad in zip(rows, pads)])
        if self.positions:
            batch["position_ids"] = positions(batch["attention_mask"])
        batch["labels"] = torch.tensor([r["label"] for r in rows])  # class ids: long; a regression's scores: float
        batch["idx"] = torch.tensor([r["idx"] for r in rows])
        return batch


def load_data(accelerator, task=None, *, data_dir=None, train_file=None, validation_file=None, test_file=None,
              text_columns=None, label_column="label", max_train_samples=None, max_eval_samples=None,
              validation_size=None, validation_dev_half=False, seed=42, do_predict=False):  # fmt: skip
    """The run's Task and its splits, every file read, cut and checked before the model loads, so that bad data is
    refused in seconds. The keywords are the flags of the same names; the validation set is named HELD_OUT."""
    error = None
    with accelerator.main_process_first():  # the hub's download once; then the others read its cache
        try:
            task = get_task(task or file_task(train_file, validation_file, test_file, text_columns, label_column))
            raw = load_glue(task, data_dir)
            for split, most in [("train", max_train_samples), *((s, max_eval_samples) for s in task.eval_splits)]:
                if split in raw and most is not None:
                    raw[split] = raw[split].select(range(min(most, len(raw[split]))))
            if validation_size is not None:  # never trained on: gone from train before any batch is drawn
                if validation_size >= len(raw["train"]):
                    why = f"the training set has {len(raw['train'])} rows; hold out fewer"
                    raise UsageError(f"--validation_size {validation_size} leaves nothing to train on: {why}")
                raw["train"], raw[HELD_OUT] = hold_out(raw["train"], validation_size, seed)
            elif validation_dev_half:
                dev = task.eval_splits[0]
                if len(raw[dev]) < 2:
                    halves = f"--validation_dev_half splits the {len(raw[dev])} dev row(s) in two halves"
                    raise UsageError(f"{halves}; it needs at least 2 (raise --max_eval_samples)")
                raw[dev], raw[HELD_OUT] = hold_out(raw[dev], len(raw[dev]) // 2, 0)  # the same halves, whatever --seed
            least = 2 if task.is_regression else 1  # a correlation needs two points
            for split in (*task.eval_splits, HELD_OUT):
                if split in raw and len(raw[split]) < least:
                    name = "the validation set" if split == HELD_OUT else f"the {split} split"
                    need = f"needs at least {least} (raise --max_eval_samples or --validation_size)"
                    raise UsageError(f"{name} has {len(raw[split])} row(s); {task.name}'s {task.metric} {need}")
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


def make_dataloaders(accelerator, tokenizer, splits, *, task, position_ids=True, max_length=128,
                     per_device_train_batch_size=8, per_device_eval_batch_size=32, seed=42, group_by_length=False,
                     pad_to_multiple_of=None, fixed_lengths=False, do_predict=False):  # fmt: skip
    """The train loader (shuffled) and {split: loader} for the eval splits of load_data's `splits` (and the test splits
    with `do_predict`). The keywords are the flags of the same names; `position_ids`: the Collator's positions."""
    from torch.utils.data import DataLoader

    with accelerator.main_process_first():  # (a hub dataset's map writes a cache file once)
        data = {s: tokenize(d, task, tokenizer, max_length) for s, d in splits.items()}
    spec = get_task(task)
    multiple = pad_to_multiple_of or (8 if torch.cuda.is_available() else 1)
    # --torch_compile: every batch padded to one of a few lengths (16, 32, 64, ... max_length), a few shapes to compile
    lengths = sorted({min(2**k, max_length) for k in range(4, max_length.bit_length() + 1)}) if fixed_lengths else None
    collate = Collator(tokenizer.pad_token_id, tokenizer.padding_side, position_ids, multiple, lengths)

    # Loaders seed from their own generator, not the global RNG that dropout uses: a resumed run sees the same dropout
    # masks as an uninterrupted one. Pinned memory: the prepared loaders copy batches to the GPU without blocking.
    def loader(split, batch_size, **order):
        return DataLoader(data[split], batch_size, collate_fn=collate, pin_memory=torch.cuda.is_available(), **order)

    order = {"shuffle": True, "generator": torch.Generator().manual_seed(seed)}
    if group_by_length:
        row_lengths = [len(x) for x in data["train"]["input_ids"]]
        order = {"sampler": LengthGroupedSampler(row_lengths, per_device_train_batch_size, seed)}
    names = [s for s in (*spec.eval_splits, HELD_OUT, *(spec.test_splits if do_predict else ())) if s in data]
    evals = {s: loader(s, per_device_eval_batch_size, generator=torch.Generator().manual_seed(seed)) for s in names}
    return loader("train", per_device_train_batch_size, **order), evals
