"""Classification metrics, threshold rules and the plots logged to MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

THRESHOLD_RULES = ("target-fpr", "max-f1", "target-precision")


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    rule: str
    target: float | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "rule": self.rule, "target": self.target, "note": self.note}


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, precision, recall, F1, FPR, ROC-AUC and AP at ``threshold``."""
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    pred = probs >= threshold
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))
    tn = int(np.sum(~pred & (labels == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both = len(set(labels.tolist())) == 2
    return {
        "accuracy": (tp + tn) / max(1, len(labels)),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "roc_auc": float(roc_auc_score(labels, probs)) if both else float("nan"),
        "average_precision": float(average_precision_score(labels, probs)) if both else float("nan"),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def _candidates(probs: np.ndarray) -> np.ndarray:
    """Thresholds halfway between consecutive distinct scores, plus one below all and
    one above all (kept strictly inside (0, 1) so every candidate can be exported)."""
    values = np.unique(np.asarray(probs, dtype=np.float64))
    mids = (values[:-1] + values[1:]) / 2 if len(values) > 1 else values
    ends = [values[0] / 2, (values[-1] + 1) / 2]
    cands = np.unique(np.concatenate([mids, ends]))
    tiny = np.finfo(np.float64).eps
    return np.unique(np.clip(cands, tiny, 1.0 - tiny))


@dataclass(frozen=True)
class _Sweep:
    """Counts and rates at every candidate threshold (ascending), from one sort of the scores."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    fpr: np.ndarray


def _sweep(labels: np.ndarray, probs: np.ndarray) -> _Sweep:
    """The same precision, recall, F1 and FPR that :func:`binary_metrics` gives at each
    candidate threshold (predicted positive: ``prob >= threshold``), in O(n log n)."""
    thresholds = _candidates(probs)
    positives = np.sort(probs[labels == 1])
    negatives = np.sort(probs[labels == 0])
    tp = len(positives) - np.searchsorted(positives, thresholds, side="left")
    fp = len(negatives) - np.searchsorted(negatives, thresholds, side="left")
    fn = len(positives) - tp
    tn = len(negatives) - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        fpr = np.where(fp + tn > 0, fp / (fp + tn), 0.0)
    return _Sweep(thresholds, tp, fp, precision, recall, f1, fpr)


def choose_threshold(labels: np.ndarray, probs: np.ndarray, rule: str, target: float | None = None) -> ThresholdChoice:
    """Pick the decision threshold on validation scores.

    Every candidate (halfway between consecutive distinct scores, plus one below and one
    above all) is scored in one pass over the sorted scores.

    Rules:
        ``target-fpr`` (default): the lowest threshold whose false-positive rate on
            the validation negatives (real clean photos) is at most ``target``
            (default 0.02). Robust when positives are synthetic.
        ``max-f1``: the threshold with the best F1 (ties: the higher threshold).
        ``target-precision``: the lowest threshold with precision >= ``target``
            (default 0.95); falls back to max-F1 with a note when unreachable.
    """
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"threshold rule {rule!r}: allowed are {', '.join(THRESHOLD_RULES)}")
    labels = np.asarray(labels).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    if len(set(labels.tolist())) < 2:
        raise ValueError("choosing a threshold needs validation images of both classes")
    sweep = _sweep(labels, probs)
    cands = sweep.thresholds
    if rule == "target-fpr":
        target = 0.02 if target is None else target
        if not 0.0 <= target < 1.0:
            raise ValueError(f"target FPR {target!r}: allowed is 0 <= target < 1")
        ok = np.flatnonzero(sweep.fpr <= target)
        if len(ok) == 0:  # negatives score as high as anything can: take the lowest FPR (ties: highest threshold)
            i = np.flatnonzero(sweep.fpr == sweep.fpr.min())[-1]
            return ThresholdChoice(
                float(cands[i]), rule, target,
                f"FPR {target} unreachable on validation; lowest FPR {sweep.fpr[i]:.3f}, recall {sweep.recall[i]:.3f}",
            )
        i = ok[0]  # candidates ascend: the lowest threshold that meets the target
        note = f"validation FPR {sweep.fpr[i]:.3f} <= {target}, recall {sweep.recall[i]:.3f}"
        negatives = int((labels == 0).sum())
        if 0 < target and negatives * target < 1:
            note += (
                f"; only {negatives} clean validation photos, so FPR <= {target} allows no false positive and the "
                f"threshold rests on the single highest-scoring clean photo (use >= {int(np.ceil(1 / target)) * 5} "
                "clean validation photos for a stable threshold)"
            )
        return ThresholdChoice(float(cands[i]), rule, target, note)
    best = np.flatnonzero(sweep.f1 == sweep.f1.max())[-1]  # ties: the higher threshold
    if rule == "max-f1":
        return ThresholdChoice(float(cands[best]), rule, None, f"validation F1 {sweep.f1[best]:.3f}")
    target = 0.95 if target is None else target
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target precision {target!r}: allowed is 0 < target <= 1")
    ok = np.flatnonzero((sweep.precision >= target) & (sweep.tp > 0))
    if len(ok) == 0:
        return ThresholdChoice(
            float(cands[best]), rule, target, f"precision {target} unreachable on validation; used max-F1 threshold"
        )
    i = ok[0]
    return ThresholdChoice(
        float(cands[i]), rule, target, f"validation precision {sweep.precision[i]:.3f}, recall {sweep.recall[i]:.3f}"
    )


def confusion_figure(metrics: dict[str, float], title: str = "confusion matrix"):
    """Matplotlib figure of the 2x2 confusion matrix (rows: truth, cols: prediction)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.array([[metrics["tn"], metrics["fp"]], [metrics["fn"], metrics["tp"]]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(grid, cmap="Blues")
    for (r, c), v in np.ndenumerate(grid):
        ax.text(c, r, str(int(v)), ha="center", va="center", fontsize=12)
    ax.set_xticks([0, 1], ["clean", "watermark"])
    ax.set_yticks([0, 1], ["clean", "watermark"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def pr_curve_figure(labels: np.ndarray, probs: np.ndarray, threshold: float):
    """Matplotlib figure of the precision-recall curve with the chosen threshold marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    precision, recall, _ = precision_recall_curve(labels, probs)
    at = binary_metrics(labels, probs, threshold)
    fig, ax = plt.subplots(figsize=(4, 3.2))
    ax.plot(recall, precision)
    ax.scatter([at["recall"]], [at["precision"]], color="red", zorder=3, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left")
    ax.set_title("precision-recall (validation)")
    fig.tight_layout()
    return fig
