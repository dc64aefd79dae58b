"""Evaluation, written once: every rank runs the same batches, the logits are gathered (the rows that pad an uneven
last batch dropped) and put back in file order, and each row is scored against its own label."""

import os

import torch
from tqdm.auto import tqdm

from common.data import HELD_OUT
from common.metrics import glue_metrics
from common.outputs import atomic_write_text
from common.tasks import get_task


@torch.no_grad()
def predict(model, loader, accelerator):
    """Logits and idx of a whole split, gathered from every rank, in file order (by idx), in eval mode. Every rank runs
    the same batches; gather_for_metrics drops the duplicated rows that pad an uneven last batch."""
    was_training = model.training
    model.eval()
    all_logits = []
    all_idx = []
    bar = tqdm(loader, desc="eval", leave=False, disable=not accelerator.is_local_main_process)
    for batch in bar:
        idx = batch.pop("idx")
        batch.pop("labels")  # no loss needed; test rows have label -1
        logits = model(**batch).logits.float()
        logits, idx = accelerator.gather_for_metrics((logits, idx))
        all_logits.append(logits.cpu())
        all_idx.append(idx.cpu())
    model.train(was_training)
    idx = torch.cat(all_idx)
    order = idx.argsort()
    return torch.cat(all_logits)[order], idx[order]


def evaluate(model, loaders, accelerator, task):
    """Metrics over every labeled eval split: plain keys for the first split, `_mm` after the second's (MNLI: accuracy
    and accuracy_mm), `val_` before the validation set's (HELD_OUT). Also returns the logits per split."""
    task = get_task(task)
    keys = {split: "{}" if i == 0 else "{}_mm" for i, split in enumerate(task.eval_splits)}
    keys[HELD_OUT] = "val_{}"
    metrics = {}
    logits = {}
    for split, key in keys.items():
        if split not in loaders:
            continue
        logits[split], idx = predict(model, loaders[split], accelerator)
        labels = in_file_order(loaders[split].dataset, idx, "label")
        preds = logits[split].squeeze(-1) if task.is_regression else logits[split].argmax(-1)
        for name, value in glue_metrics(task, preds.numpy(), labels).items():
            metrics[key.format(name)] = value
    return metrics, logits


def intervals(logits, loaders, task, draws=1000):
    """A 95% interval of each metric of an evaluation (its `logits`, evaluate's): the 2.5th and 97.5th percentiles of
    the metric over `draws` resamples of the split's rows with replacement (a bootstrap; seeded, so a run's interval
    is the same every time), keyed as evaluate's metrics."""
    import numpy as np

    task = get_task(task)
    out = {}
    for i, split in enumerate(task.eval_splits):
        if split not in logits:
            continue
        dataset = loaders[split].dataset
        labels = np.asarray(in_file_order(dataset, torch.tensor(sorted(dataset["idx"])), "label"))
        preds = (logits[split].squeeze(-1) if task.is_regression else logits[split].argmax(-1)).numpy()
        rng = np.random.default_rng(0)
        rows = (rng.integers(0, len(labels), len(labels)) for _ in range(draws))  # (one draw at a time: memory)
        samples = [glue_metrics(task, preds[r], labels[r]) for r in rows]
        for name in samples[0]:
            values = np.array([s[name] for s in samples], dtype=float)
            low, high = np.nanpercentile(values, [2.5, 97.5]) if not np.isnan(values).all() else (np.nan, np.nan)
            out[name if i == 0 else f"{name}_mm"] = [float(low), float(high)]
    return out


def selected_metric(task, loaders):
    """The metric that picks the best weights and stops early: the validation set's when there is one (HELD_OUT among
    the eval `loaders`), else the first eval split's."""
    return ("val_" if HELD_OUT in loaders else "") + get_task(task).metric


def constant_metrics(loaders, task):
    """The metrics of always predicting the majority class of each labeled eval split (STS-B: always its mean score,
    whose correlations are undefined: nan), keyed as evaluate's: what a model that learned nothing scores."""
    import numpy as np

    task = get_task(task)
    keys = {split: "{}" if i == 0 else "{}_mm" for i, split in enumerate(task.eval_splits)}
    keys[HELD_OUT] = "val_{}"
    metrics = {}
    for split, key in keys.items():
        if split not in loaders:
            continue
        labels = np.asarray(list(loaders[split].dataset["label"]))
        if task.is_regression:
            preds = np.full(len(labels), labels.mean())
        else:
            preds = np.full(len(labels), np.bincount(labels).argmax())
        for name, value in glue_metrics(task, preds, labels).items():
            metrics[key.format(name)] = value
    return metrics


def in_file_order(dataset, idx, column):
    """`column` of `dataset` for the rows `idx` (sorted: as predict returns them), which must be every row of the
    dataset exactly once."""
    # (a list first: torch.tensor turns an exception raised while it reads a dataset column, such
    # as a Ctrl-C, into a TypeError)
    rows = torch.tensor(list(dataset["idx"]))
    order = rows.argsort()
    if not torch.equal(rows[order], idx):
        raise RuntimeError(
            f"the gathered predictions are not every row of the split once ({len(idx)} for {len(order)} rows)"
        )
    values = dataset[column]
    return [values[i] for i in order.tolist()]


def write_predictions(model, loaders, accelerator, task, output_dir):
    """GLUE submission files (OUTPUT_DIR/predictions/<Task>.tsv) for the test split(s); every rank calls this, the main
    process writes."""
    task = get_task(task)
    names = {"test": task.tsv_dir, "test_matched": "MNLI-m", "test_mismatched": "MNLI-mm"}
    for split in task.test_splits:
        if split not in loaders:
            continue
        logits, idx = predict(model, loaders[split], accelerator)
        # the file's own ids, for GLUE's server
        index = in_file_order(loaders[split].dataset, idx, "index")
        if task.is_regression:
            scores = logits.squeeze(-1).tolist()  # (STS-B's from 0 to 5)
            preds = [f"{min(max(x, 0.0), 5.0) if task.name == 'stsb' else x:.3f}" for x in scores]
        elif task.name in ("mnli", "qnli", "rte", "files"):  # (these name the class)
            preds = [task.label_names[i] for i in logits.argmax(-1).tolist()]
        else:
            preds = [str(i) for i in logits.argmax(-1).tolist()]
        if accelerator.is_main_process:
            rows = "".join(f"{i}\t{p}\n" for i, p in zip(index, preds))
            atomic_write_text(
                os.path.join(output_dir, "predictions", f"{names[split]}.tsv"), "index\tprediction\n" + rows
            )
