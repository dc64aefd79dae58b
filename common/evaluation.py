"""Evaluation, written once: every rank runs the same batches, the logits are gathered (the rows that pad an uneven
last batch dropped) and put back in file order, and each row is scored against its own label."""

import math
import os
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from common.data import HELD_OUT
from common.metrics import glue_metrics
from common.outputs import atomic_write_text
from common.tasks import get_task


def split_keys(task):
    """{split: how its metrics are named}: plain for the first eval split, `_mm` after MNLI's second, `val_` before the
    validation set's (HELD_OUT)."""
    return {**{s: "{}" if i == 0 else "{}_mm" for i, s in enumerate(task.eval_splits)}, HELD_OUT: "val_{}"}


def predictions(task, logits):
    """The predicted classes (a regression: the scores) of `logits`."""
    return logits.squeeze(-1) if task.is_regression else logits.argmax(-1)


@torch.no_grad()
def predict(model, loader, accelerator):
    """Logits and idx of a whole split, gathered from every rank, in file order (by idx), in eval mode;
    gather_for_metrics drops the duplicated rows that pad an uneven last batch."""
    was_training, all_logits, all_idx = model.training, [], []
    model.eval()
    for batch in tqdm(loader, desc="eval", leave=False, disable=not accelerator.is_local_main_process):
        idx = batch.pop("idx")
        batch.pop("labels")  # no loss needed; test rows have label -1
        logits, idx = accelerator.gather_for_metrics((model(**batch).logits.float(), idx))
        all_logits.append(logits.cpu())
        all_idx.append(idx.cpu())
    model.train(was_training)
    idx, order = torch.cat(all_idx).sort()
    return torch.cat(all_logits)[order], idx


@torch.no_grad()
def preflight(model, loaders, accelerator, task, batches=2):
    """`batches` batches of every eval split through the model and the metric before step 1 (litgpt's "verifying
    settings"): a broken evaluation fails in seconds, not after an epoch. Every rank runs the same rows, outside the
    prepared loaders (whose iteration accelerate tracks). Returns the seconds it took."""
    started, task, was_training = time.perf_counter(), get_task(task), model.training
    model.eval()
    for loader in loaders.values():
        size, rows = loader.total_batch_size // accelerator.num_processes, len(loader.dataset)
        outputs, labels = [], []
        for start in range(0, min(batches * size, rows), size):
            batch = loader.collate_fn([loader.dataset[i] for i in range(start, min(start + size, rows))])
            labels.append(batch.pop("labels"))
            batch.pop("idx")
            outputs.append(model(**{k: v.to(accelerator.device) for k, v in batch.items()}).logits.float().cpu())
        glue_metrics(task, predictions(task, torch.cat(outputs)).numpy(), torch.cat(labels).numpy())
    model.train(was_training)
    offload = getattr(getattr(model, "optimizer", None), "parameter_offload", None)
    if offload is not None:  # ZeRO-3 traced these forwards as a step: forget it, so that step 1 is traced as a step
        coordinator = offload.get_param_coordinator()
        if not coordinator.is_invalid_trace():
            coordinator._invalidate_trace()  # (DeepSpeed's own call when its hooks change)
        model.empty_partition_cache()  # every weight partitioned again, as before any forward
    return time.perf_counter() - started


def evaluate(model, loaders, accelerator, task):
    """(metrics over every labeled eval split, named by split_keys; the logits per split)."""
    task, metrics, logits = get_task(task), {}, {}
    for split, key in split_keys(task).items():
        if split in loaders:
            logits[split], idx = predict(model, loaders[split], accelerator)
            labels = in_file_order(loaders[split].dataset, idx, "label")
            for name, value in glue_metrics(task, predictions(task, logits[split]).numpy(), labels).items():
                metrics[key.format(name)] = value
    return metrics, logits


def wilson(correct, n, z=1.96):
    """Wilson's 95% score interval of an accuracy of `correct` out of `n` rows: never of zero width, even on one row or
    a perfect score (where a bootstrap says [1.0, 1.0])."""
    p, z2 = correct / n, z * z
    center, half = (p + z2 / (2 * n)) / (1 + z2 / n), z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [max(0.0, center - half), min(1.0, center + half)]


def fisher(r, n, spearman=False, z=1.96):
    """The 95% interval of a correlation `r` of `n` pairs by Fisher's z (Spearman's with Fieller's variance,
    1.06 / (n - 3)); None for fewer than 4 pairs, or r of -1, 1 or nan (two points lie on a line)."""
    if n < 4 or not -1 < r < 1:
        return None
    half = z * math.sqrt((1.06 if spearman else 1.0) / (n - 3))
    return [math.tanh(math.atanh(r) - half), math.tanh(math.atanh(r) + half)]


BOOTSTRAP_ROWS = 20  # fewer rows give no bootstrap interval: its resamples repeat a handful of rows


def intervals(logits, loaders, task, draws=1000):
    """(a 95% interval of each metric of an evaluation, keyed as evaluate's; why a metric has none). Accuracy:
    Wilson's; Pearson and Spearman: Fisher's; F1 and Matthews: a seeded bootstrap over the rows, none on fewer than
    BOOTSTRAP_ROWS rows, labels of one value, or resamples that all score the same. Never one that looks certain."""
    task, out, why = get_task(task), {}, {}
    for split, key in split_keys(task).items():
        if split not in logits or split == HELD_OUT:
            continue
        dataset = loaders[split].dataset
        labels = np.asarray(in_file_order(dataset, torch.tensor(sorted(dataset["idx"])), "label"))
        preds = predictions(task, logits[split]).numpy()
        metrics, n = glue_metrics(task, preds, labels), len(labels)
        if "accuracy" in metrics:
            out[key.format("accuracy")] = wilson(int((preds == labels).sum()), n)
        for name in [name for name in ("pearson", "spearmanr") if name in metrics]:
            out[key.format(name)] = fisher(metrics[name], n, spearman=name == "spearmanr")
            few = f"too few rows ({n}; at least 4)" if n < 4 else f"{name} is {metrics[name]:g} on {n} rows"
            why.update({key.format(name): few} if out[key.format(name)] is None else {})
        rest = [name for name in metrics if key.format(name) not in out]
        if rest and (n < BOOTSTRAP_ROWS or len(set(labels.tolist())) == 1):
            few = f"too few rows ({n}; at least {BOOTSTRAP_ROWS})" if n < BOOTSTRAP_ROWS else "one label only"
            out.update({key.format(name): None for name in rest})
            why.update({key.format(name): few for name in rest})
        elif rest:
            rng = np.random.default_rng(0)
            samples = [glue_metrics(task, preds[r], labels[r]) for r in (rng.integers(0, n, n) for _ in range(draws))]
            for name in rest:
                values = np.array([s[name] for s in samples], dtype=float)
                low, high = np.nanpercentile(values, [2.5, 97.5]) if not np.isnan(values).all() else (np.nan, np.nan)
                out[key.format(name)] = [float(low), float(high)] if high > low else None  # (nan: never defined)
                if out[key.format(name)] is None:
                    why[key.format(name)] = "every resample scores the same"
    return out, why


def selected_metric(task, loaders):
    """The metric that picks best/ and stops early: the validation set's when there is one, else the first split's."""
    return ("val_" if HELD_OUT in loaders else "") + get_task(task).metric


def constant_metrics(loaders, task):
    """The metrics of always predicting the majority class of each labeled eval split (STS-B: its mean score, whose
    correlations are undefined: nan), keyed as evaluate's: what a model that learned nothing scores."""
    task, metrics = get_task(task), {}
    for split, key in split_keys(task).items():
        if split in loaders:
            labels = np.asarray(list(loaders[split].dataset["label"]))
            constant = labels.mean() if task.is_regression else np.bincount(labels).argmax()
            for name, value in glue_metrics(task, np.full(len(labels), constant), labels).items():
                metrics[key.format(name)] = value
    return metrics


def in_file_order(dataset, idx, column):
    """`column` of `dataset` for the rows `idx` (sorted, as predict returns them), which must be every row once."""
    rows = torch.tensor(list(dataset["idx"]))  # (a list first: torch.tensor turns a Ctrl-C into a TypeError)
    order = rows.argsort()
    if not torch.equal(rows[order], idx):
        raise RuntimeError(f"the gathered predictions are not every row of the split once ({len(idx)}, {len(order)})")
    values = dataset[column]
    return [values[i] for i in order.tolist()]


def write_predictions(model, loaders, accelerator, task, output_dir):
    """GLUE submission files (OUTPUT_DIR/predictions/<Task>.tsv) of the test split(s), with the files' own ids; every
    rank calls this, the main process writes."""
    task = get_task(task)
    names = {"test": task.tsv_dir, "test_matched": "MNLI-m", "test_mismatched": "MNLI-mm"}
    for split in [s for s in task.test_splits if s in loaders]:
        logits, idx = predict(model, loaders[split], accelerator)
        index = in_file_order(loaders[split].dataset, idx, "index")
        if task.is_regression:  # (STS-B's clamped from 0 to 5)
            preds = [f"{min(max(x, 0.0), 5.0) if task.name == 'stsb' else x:.3f}" for x in logits.squeeze(-1).tolist()]
        else:  # MNLI, QNLI, RTE and your own data name the class; the others write its id
            named = task.name in ("mnli", "qnli", "rte", "files")
            preds = [task.label_names[i] if named else str(i) for i in logits.argmax(-1).tolist()]
        if accelerator.is_main_process:
            rows = "index\tprediction\n" + "".join(f"{i}\t{p}\n" for i, p in zip(index, preds))
            atomic_write_text(os.path.join(output_dir, "predictions", f"{names[split]}.tsv"), rows)
