"""Threshold rules and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from train.metrics import binary_metrics, choose_threshold, confusion_figure, pr_curve_figure

LABELS = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
PROBS = np.array([0.05, 0.1, 0.1, 0.2, 0.2, 0.3, 0.35, 0.4, 0.55, 0.9, 0.5, 0.6, 0.7, 0.8, 0.95])


def test_binary_metrics_counts() -> None:
    m = binary_metrics(LABELS, PROBS, 0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (5, 2, 0, 8)
    assert m["precision"] == pytest.approx(5 / 7)
    assert m["fpr"] == pytest.approx(0.2)
    assert 0.5 < m["roc_auc"] <= 1.0


def test_target_fpr_is_the_default_style_rule() -> None:
    choice = choose_threshold(LABELS, PROBS, "target-fpr", 0.1)
    m = binary_metrics(LABELS, PROBS, choice.threshold)
    assert m["fpr"] <= 0.1
    assert choice.threshold == pytest.approx((0.55 + 0.6) / 2)  # lowest threshold that allows one FP of ten
    strict = choose_threshold(LABELS, PROBS, "target-fpr", 0.0)
    assert binary_metrics(LABELS, PROBS, strict.threshold)["fp"] == 0


def test_max_f1_and_target_precision() -> None:
    best = choose_threshold(LABELS, PROBS, "max-f1")
    f1s = [binary_metrics(LABELS, PROBS, t)["f1"] for t in np.linspace(0.01, 0.99, 99)]
    assert binary_metrics(LABELS, PROBS, best.threshold)["f1"] >= max(f1s) - 1e-9
    precise = choose_threshold(LABELS, PROBS, "target-precision", 0.99)
    assert binary_metrics(LABELS, PROBS, precise.threshold)["precision"] == 1.0
    assert "unreachable" in choose_threshold(np.array([0, 1]), np.array([0.9, 0.1]), "target-precision", 0.99).note


def test_bad_rule_and_single_class() -> None:
    with pytest.raises(ValueError, match="allowed are"):
        choose_threshold(LABELS, PROBS, "median")
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold(np.zeros(4), np.ones(4) / 2, "max-f1")


def test_figures_render() -> None:
    import matplotlib.pyplot as plt

    for fig in (confusion_figure(binary_metrics(LABELS, PROBS, 0.5)), pr_curve_figure(LABELS, PROBS, 0.5)):
        assert fig.axes
        plt.close(fig)


def test_saturated_scores_still_give_an_exportable_threshold() -> None:
    labels = np.array([0, 0, 1, 1])
    probs = np.array([1.0, 0.2, 1.0, 1.0])  # a clean photo scored as high as possible
    choice = choose_threshold(labels, probs, "target-fpr", 0.0)
    assert 0.0 < choice.threshold < 1.0
    assert "unreachable" in choice.note


def test_target_fpr_says_when_too_few_clean_photos_resolve_it() -> None:
    few = choose_threshold(LABELS, PROBS, "target-fpr", 0.02)  # 10 clean photos: 2 % of 10 < 1
    assert "only 10 clean validation photos" in few.note and "highest-scoring clean photo" in few.note
    assert "use >= 250 clean validation photos" in few.note
    enough = choose_threshold(LABELS, PROBS, "target-fpr", 0.1)
    assert "only" not in enough.note
    assert "only" not in choose_threshold(LABELS, PROBS, "target-fpr", 0.0).note
