"""Verification metrics over scored pairs: ROC AUC, EER, TAR@FAR and k-fold accuracy.

Scores are similarities (higher means "same person"); labels are 1 for genuine pairs
(same person) and 0 for impostor pairs. FAR is the fraction of impostor pairs accepted,
TAR the fraction of genuine pairs accepted, at one threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


@dataclass
class VerificationMetrics:
    """Metrics of one set of scored pairs.

    `tar_at_far` maps a target FAR to the highest TAR whose FAR does not exceed it. With
    `impostor` impostor pairs the smallest non-zero FAR is 1 / impostor, so a target below
    that is only reached at FAR = 0, and the estimate rests on very few pairs.
    """

    roc_auc: float
    eer: float
    eer_threshold: float
    tar_at_far: dict[float, float]
    accuracy: float
    accuracy_std: float
    genuine: int
    impostor: int

    def as_record(self, prefix: str) -> dict[str, float]:
        record = {
            f"{prefix}.roc_auc": self.roc_auc,
            f"{prefix}.eer": self.eer,
            f"{prefix}.accuracy": self.accuracy,
            f"{prefix}.accuracy_std": self.accuracy_std,
            f"{prefix}.genuine": float(self.genuine),
            f"{prefix}.impostor": float(self.impostor),
        }
        for far, tar in self.tar_at_far.items():
            record[f"{prefix}.tar@far={far:.0e}"] = tar
        return record


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}")
    if not (labels == 1).any() or not (labels == 0).any():
        raise ValueError("verification metrics need at least one genuine (1) and one impostor (0) pair")
    return scores, labels


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Return (EER, threshold): the rate where FAR equals FRR = 1 - TAR.

    The ROC is piecewise linear between its points; the EER is where the segment that
    crosses FAR = FRR meets that line, so it is exact for the empirical curve.
    """
    scores, labels = _check(scores, labels)
    far, tar, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    frr = 1.0 - tar
    difference = far - frr  # rises from -1 to +1 along the curve
    crossing = int(np.flatnonzero(difference >= 0)[0])
    if crossing == 0 or difference[crossing] == 0:
        return float(far[crossing]), float(thresholds[crossing])

    previous = crossing - 1
    weight = -difference[previous] / (difference[crossing] - difference[previous])
    eer = far[previous] + weight * (far[crossing] - far[previous])
    threshold = thresholds[previous] + weight * (thresholds[crossing] - thresholds[previous])
    if not np.isfinite(threshold):  # scikit-learn's first threshold is +inf
        threshold = thresholds[crossing]
    return float(eer), float(threshold)


def tar_at_far(scores: np.ndarray, labels: np.ndarray, target_far: float) -> float:
    """Return the highest TAR over thresholds whose FAR is at most `target_far`."""
    scores, labels = _check(scores, labels)
    far, tar, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(tar[far <= target_far + 1e-12].max())


def best_threshold_accuracy(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Return (accuracy, threshold) of the threshold that classifies the pairs best.

    A pair is accepted when its score is >= the threshold. The threshold sits midway
    between the last accepted and the first rejected score, so held-out pairs that fall
    between the two are split evenly (the usual choice in LFW's 10-fold protocol).
    """
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_labels = labels[order]

    # Accepting the first i pairs: correct = genuine among them + impostors after them.
    genuine_accepted = np.concatenate([[0], np.cumsum(sorted_labels)])
    impostor_total = int((labels == 0).sum())
    impostor_accepted = np.arange(len(scores) + 1) - genuine_accepted
    correct = genuine_accepted + (impostor_total - impostor_accepted)

    # Only cut between distinct scores, so ties fall on one side together.
    valid = np.ones(len(scores) + 1, dtype=bool)
    valid[1:-1] = sorted_scores[:-1] != sorted_scores[1:]
    best = int(np.flatnonzero(valid)[np.argmax(correct[valid])])
    if best == 0:
        threshold = sorted_scores[0] + 1.0
    elif best == len(scores):
        threshold = sorted_scores[-1]
    else:
        threshold = (sorted_scores[best - 1] + sorted_scores[best]) / 2.0
    return float(correct[best] / len(scores)), float(threshold)


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> tuple[float, float]:
    """LFW-style accuracy: per fold, pick the best threshold on the other folds, test on it.

    Args:
        folds: int (N,) fold id per pair.

    Returns:
        (mean, standard deviation) of the held-out fold accuracies.
    """
    scores, labels = _check(scores, labels)
    accuracies = []
    for fold in np.unique(folds):
        test = folds == fold
        train = ~test
        if not (labels[train] == 1).any() or not (labels[train] == 0).any():
            continue
        _, threshold = best_threshold_accuracy(scores[train], labels[train])
        accuracies.append(float(((scores[test] >= threshold) == (labels[test] == 1)).mean()))
    if not accuracies:
        return float("nan"), float("nan")
    return float(np.mean(accuracies)), float(np.std(accuracies))


def verification_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    folds: np.ndarray,
    target_fars: tuple[float, ...] = (1e-2, 1e-3),
) -> VerificationMetrics:
    """Compute every verification metric for one set of scored pairs."""
    scores, labels = _check(scores, labels)
    eer, threshold = equal_error_rate(scores, labels)
    accuracy, accuracy_std = kfold_accuracy(scores, labels, folds)
    return VerificationMetrics(
        roc_auc=float(roc_auc_score(labels, scores)),
        eer=eer,
        eer_threshold=threshold,
        tar_at_far={far: tar_at_far(scores, labels, far) for far in target_fars},
        accuracy=accuracy,
        accuracy_std=accuracy_std,
        genuine=int((labels == 1).sum()),
        impostor=int((labels == 0).sum()),
    )
