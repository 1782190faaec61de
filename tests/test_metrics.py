"""Threshold rules and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from train import metrics as metrics_lib
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


def _reference_choice(labels: np.ndarray, probs: np.ndarray, rule: str, target: float | None) -> tuple[float, str]:
    """The former implementation: every metric recomputed at every candidate (quadratic)."""
    table = [(t, binary_metrics(labels, probs, t)) for t in metrics_lib._candidates(probs)]
    if rule == "target-fpr":
        ok = [(t, m) for t, m in table if m["fpr"] <= target]
        if not ok:
            t, m = min(table, key=lambda tm: (tm[1]["fpr"], -tm[0]))
            return float(t), f"lowest FPR {m['fpr']:.3f}, recall {m['recall']:.3f}"
        t, m = min(ok, key=lambda tm: tm[0])
        return float(t), f"validation FPR {m['fpr']:.3f} <= {target}, recall {m['recall']:.3f}"
    best_t, best_m = max(table, key=lambda tm: (tm[1]["f1"], tm[0]))
    if rule == "max-f1":
        return float(best_t), f"validation F1 {best_m['f1']:.3f}"
    ok = [(t, m) for t, m in table if m["precision"] >= target and m["tp"] > 0]
    if not ok:
        return float(best_t), "unreachable"
    t, m = min(ok, key=lambda tm: tm[0])
    return float(t), f"validation precision {m['precision']:.3f}, recall {m['recall']:.3f}"


@pytest.mark.parametrize("seed", range(12))
def test_one_pass_threshold_rules_match_the_quadratic_ones(seed: int) -> None:
    """Random, heavily tied, saturated and separable scores: the same threshold and note."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    kind = seed % 4
    if kind == 0:
        probs = rng.random(n)
    elif kind == 1:
        probs = rng.integers(0, 6, n) / 5  # few distinct values, 0 and 1 included: many ties
    elif kind == 2:
        probs = np.where(rng.random(n) < 0.5, 1.0, rng.random(n).round(2))  # saturated
    else:
        probs = np.clip(labels * 0.6 + rng.random(n) * 0.5, 0, 1)  # nearly separable
    for rule, target in (("target-fpr", 0.0), ("target-fpr", 0.02), ("target-fpr", 0.3), ("max-f1", None),
                         ("target-precision", 0.9), ("target-precision", 1.0)):
        got = choose_threshold(labels, probs, rule, target)
        threshold, note = _reference_choice(labels, probs, rule, target)
        assert got.threshold == threshold, (rule, target)
        assert note in got.note, (rule, target, got.note, note)
