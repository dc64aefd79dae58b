"""The official GLUE metric of each task, on plain numpy (evaluate.load needs the hub)."""

import warnings

import numpy as np
from scipy import stats


def accuracy(preds, labels):
    return float((preds == labels).mean())


def f1(preds, labels):
    """Binary F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    tp = int(((preds == 1) & (labels == 1)).sum())
    fp = int(((preds == 1) & (labels != 1)).sum())
    fn = int(((preds != 1) & (labels == 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_correlation(preds, labels):
    tp = float(((preds == 1) & (labels == 1)).sum())
    tn = float(((preds == 0) & (labels == 0)).sum())
    fp = float(((preds == 1) & (labels == 0)).sum())
    fn = float(((preds == 0) & (labels == 1)).sum())
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denom) if denom else 0.0


def glue_metrics(task, preds, labels):
    """The task's metrics (a Task, or a GLUE task's name): preds are class ids (scores for a regression), labels the
    gold labels. Returns a dict of floats. Your own data: accuracy, or Pearson and Spearman for a regression."""
    name = getattr(task, "name", task)
    preds, labels = np.asarray(preds), np.asarray(labels)
    if name == "stsb" or getattr(task, "is_regression", False):  # nan (null in JSON) when either side is constant
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            return {
                "pearson": float(stats.pearsonr(preds, labels)[0]),
                "spearmanr": float(stats.spearmanr(preds, labels)[0]),
            }
    if name == "cola":
        return {"matthews_correlation": matthews_correlation(preds, labels)}
    if name in ("mrpc", "qqp"):
        return {"accuracy": accuracy(preds, labels), "f1": f1(preds, labels)}
    return {"accuracy": accuracy(preds, labels)}
