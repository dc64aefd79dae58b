"""Evaluation, written once: every rank runs the same batches, the logits are gathered (the rows that pad an uneven
last batch dropped) and put back in file order, and each row is scored against its own label."""

import math
import os
import time

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


@torch.no_grad()
def preflight(model, loaders, accelerator, task, batches=2):
    """The first `batches` batches of every eval split through the model and the task's metric, before step 1 (as
    litgpt's "verifying settings"): a broken validation file, metric or an evaluation that runs out of memory fails in
    seconds, not after the first epoch. Every rank runs the same rows (a collective under ZeRO-3 and FSDP2), outside
    the prepared loaders, whose iteration accelerate tracks. Returns the seconds it took."""
    started, task = time.perf_counter(), get_task(task)
    was_training = model.training
    model.eval()
    for loader in loaders.values():
        size, rows = loader.total_batch_size // accelerator.num_processes, len(loader.dataset)
        outputs, labels = [], []
        for start in range(0, min(batches * size, rows), size):
            batch = loader.collate_fn([loader.dataset[i] for i in range(start, min(start + size, rows))])
            labels.append(batch.pop("labels"))
            batch.pop("idx")
            outputs.append(model(**{k: v.to(accelerator.device) for k, v in batch.items()}).logits.float().cpu())
        logits, labels = torch.cat(outputs), torch.cat(labels).numpy()
        glue_metrics(task, (logits.squeeze(-1) if task.is_regression else logits.argmax(-1)).numpy(), labels)
    model.train(was_training)
    offload = getattr(getattr(model, "optimizer", None), "parameter_offload", None)
    if offload is not None:  # ZeRO-3 traced these forwards as a step: forget it, so that step 1 is traced as a step
        coordinator = offload.get_param_coordinator()
        if not coordinator.is_invalid_trace():
            coordinator._invalidate_trace()  # (DeepSpeed's own call when its hooks change)
        model.empty_partition_cache()  # every weight partitioned again, as before any forward
    return time.perf_counter() - started


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


def wilson(correct, n, z=1.96):
    """Wilson's 95% score interval of an accuracy of `correct` out of `n` rows: never of zero width, even on one row or
    a perfect score (where a bootstrap says [1.0, 1.0])."""
    p, z2 = correct / n, z * z
    center, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [max(0.0, center - half), min(1.0, center + half)]


BOOTSTRAP_ROWS = 20  # fewer rows than this give no bootstrap interval: its resamples repeat a handful of rows


def fisher(r, n, spearman=False, z=1.96):
    """The 95% interval of a correlation `r` of `n` pairs by Fisher's z (Spearman's with Fieller's variance,
    1.06 / (n - 3)); None when it has none: fewer than 4 pairs, or r of -1, 1 or nan (two points lie on a line)."""
    if n < 4 or not -1 < r < 1:
        return None
    half = z * math.sqrt((1.06 if spearman else 1.0) / (n - 3))
    return [math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)]


def intervals(logits, loaders, task, draws=1000):
    """A 95% interval of each metric of an evaluation (its `logits`, evaluate's), keyed as evaluate's metrics, and
    why a metric has none ({name: reason}). Accuracy: Wilson's score interval; Pearson and Spearman: Fisher's. F1 and
    Matthews: the 2.5th and 97.5th percentiles over `draws` resamples of the rows with replacement (a bootstrap,
    seeded: a run's interval is the same every time), none (null) on fewer than BOOTSTRAP_ROWS rows, on labels of one
    value, or where every resample scores the same. Never an interval that looks certain and is not."""
    import numpy as np

    task = get_task(task)
    out, why = {}, {}
    for i, split in enumerate(task.eval_splits):
        if split not in logits:
            continue
        dataset = loaders[split].dataset
        labels = np.asarray(in_file_order(dataset, torch.tensor(sorted(dataset["idx"])), "label"))
        preds = (logits[split].squeeze(-1) if task.is_regression else logits[split].argmax(-1)).numpy()
        key = (lambda name: name) if i == 0 else (lambda name: f"{name}_mm")
        metrics = glue_metrics(task, preds, labels)
        if "accuracy" in metrics:
            out[key("accuracy")] = wilson(int((preds == labels).sum()), len(labels))
        for name in ("pearson", "spearmanr"):
            if name in metrics:
                out[key(name)] = fisher(metrics[name], len(labels), spearman=name == "spearmanr")
                if out[key(name)] is None:
                    few = len(labels) < 4
                    shown = f"{name} is {metrics[name]:g} on {len(labels)} rows"
                    why[key(name)] = f"too few rows ({len(labels)}; at least 4)" if few else shown
        rest = [name for name in metrics if key(name) not in out]
        if not rest:
            continue
        if len(labels) < BOOTSTRAP_ROWS or len(set(labels.tolist())) == 1:
            for name in rest:
                out[key(name)] = None
                few = len(labels) < BOOTSTRAP_ROWS
                shown = f"too few rows ({len(labels)}; at least {BOOTSTRAP_ROWS})"
                why[key(name)] = shown if few else "the labels are all one value"
            continue
        rng = np.random.default_rng(0)
        rows = (rng.integers(0, len(labels), len(labels)) for _ in range(draws))  # (one draw at a time: memory)
        samples = [glue_metrics(task, preds[r], labels[r]) for r in rows]
        for name in rest:
            values = np.array([s[name] for s in samples], dtype=float)
            low, high = np.nanpercentile(values, [2.5, 97.5]) if not np.isnan(values).all() else (np.nan, np.nan)
            if not high > low:  # (nan: undefined in every resample)
                out[key(name)], why[key(name)] = None, "every resample scores the same"
            else:
                out[key(name)] = [float(low), float(high)]
    return out, why


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
