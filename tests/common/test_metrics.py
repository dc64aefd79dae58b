import math

import pytest

from common.metrics import glue_metrics


def test_accuracy_and_f1():
    preds, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    # tp=2, fp=1, fn=1: F1 = 2*2 / (2*2 + 1 + 1) = 2/3; accuracy 3/5
    assert glue_metrics("mrpc", preds, labels) == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})
    assert glue_metrics("rte", preds, labels) == {"accuracy": 0.6}
    assert glue_metrics("qqp", [0, 0], [1, 0])["f1"] == 0.0


def test_matthews_by_hand():
    preds, labels = [1, 1, 1, 0, 0, 0, 1, 0], [1, 1, 0, 0, 0, 1, 1, 0]
    tp, tn, fp, fn = 3, 3, 1, 1
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))  # = 0.5
    assert glue_metrics("cola", preds, labels)["matthews_correlation"] == pytest.approx(mcc)
    # constant prediction
    assert glue_metrics("cola", [1, 1, 1], [1, 0, 1])["matthews_correlation"] == 0.0


def test_pearson_spearman_by_hand():
    preds, labels = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    # Pearson: both centred at 2.5; cov = (2.25 - 0.25*... ) computed: sum dx*dy = 2.25+(-0.5*0.5)+(0.5*-0.5)+2.25 = 4
    # var = 5 each -> r = 0.8. Spearman on ranks is the same numbers -> 0.8.
    out = glue_metrics("stsb", preds, labels)
    assert out == pytest.approx({"pearson": 0.8, "spearmanr": 0.8})
    assert glue_metrics("stsb", [3.0, 1.0, 2.0], [30.0, 10.0, 25.0])["spearmanr"] == pytest.approx(1.0)
