"""The official GLUE metric of each task, on plain numpy (evaluate.load needs the hub)."""

import warnings

import numpy as np
from scipy import stats


def accuracy(preds, labels):
    return float((preds == labels).mean())


def confusion(preds, labels):
    """(true positives, true negatives, false positives, false negatives) of the positive class (label 1)."""
    predicted, actual = preds == 1, labels == 1
    cells = (predicted & actual, ~predicted & ~actual, predicted & ~actual, ~predicted & actual)
    return [float(x.sum()) for x in cells]


def f1(preds, labels):
    """Binary F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    tp, _, fp, fn = confusion(preds, labels)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_correlation(preds, labels):
    tp, tn, fp, fn = confusion(preds, labels)
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom else 0.0


SCORES = {"cola": [matthews_correlation], "mrpc": [accuracy, f1], "qqp": [accuracy, f1]}  # the others: accuracy


def glue_metrics(task, preds, labels):
    """The task's metrics (a Task, or a GLUE task's name) as a dict of floats: preds are class ids (scores for a
    regression). Your own data: accuracy, or Pearson and Spearman for a regression."""
    name = getattr(task, "name", task)
    preds, labels = np.asarray(preds), np.asarray(labels)
    if name == "stsb" or getattr(task, "is_regression", False):  # nan (null in JSON) when either side is constant
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            pearson, spearman = stats.pearsonr(preds, labels)[0], stats.spearmanr(preds, labels)[0]
        return {"pearson": float(pearson), "spearmanr": float(spearman)}
    return {score.__name__: score(preds, labels) for score in SCORES.get(name, [accuracy])}
