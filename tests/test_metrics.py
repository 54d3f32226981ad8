"""Verification metrics against hand-computed cases and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score, roc_curve

from fedneg.metrics import best_threshold_accuracy, equal_error_rate, kfold_accuracy, tar_at_far, verification_metrics


def test_perfect_separation():
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.0])
    labels = np.array([1, 1, 1, 0, 0, 0])
    metrics = verification_metrics(scores, labels, folds=np.arange(6) % 3)
    assert metrics.roc_auc == 1.0
    assert metrics.eer == 0.0
    assert metrics.tar_at_far[1e-2] == 1.0
    assert metrics.accuracy == 1.0
    assert (metrics.genuine, metrics.impostor) == (3, 3)


def test_eer_hand_computed():
    # Genuine 0.9, 0.6, 0.3; impostor 0.8, 0.2, 0.1. At a threshold just below 0.6: TAR 2/3,
    # FAR 1/3, so FRR = FAR = 1/3 and the EER is exactly 1/3.
    scores = np.array([0.9, 0.6, 0.3, 0.8, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0])
    eer, threshold = equal_error_rate(scores, labels)
    assert eer == pytest.approx(1 / 3)
    assert 0.3 < threshold <= 0.8


def test_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    scores = labels * 0.5 + rng.normal(size=500)
    metrics = verification_metrics(scores, labels, folds=np.arange(500) % 10)
    assert metrics.roc_auc == pytest.approx(roc_auc_score(labels, scores))


def test_tar_at_far_hand_computed():
    # 10 impostors: FAR = 0.1 allows one impostor above threshold (score 0.95).
    impostor = np.array([0.95, 0.5, 0.4, 0.3, 0.3, 0.2, 0.2, 0.1, 0.0, -0.1])
    genuine = np.array([0.99, 0.9, 0.8, 0.45, 0.1])
    scores = np.concatenate([genuine, impostor])
    labels = np.concatenate([np.ones(5), np.zeros(10)])
    assert tar_at_far(scores, labels, 0.0) == pytest.approx(0.2)  # only 0.99 beats every impostor
    assert tar_at_far(scores, labels, 0.1) == pytest.approx(0.6)  # 0.99, 0.9, 0.8 above 0.5
    assert tar_at_far(scores, labels, 0.2) == pytest.approx(0.8)  # 0.45 clears the third impostor


def test_tar_at_far_matches_roc_curve():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 2000)
    scores = labels + rng.normal(size=2000)
    far, tar, _ = roc_curve(labels, scores, drop_intermediate=False)
    assert tar_at_far(scores, labels, 1e-2) == pytest.approx(tar[far <= 1e-2].max())


def test_best_threshold_accuracy_hand_computed():
    scores = np.array([0.9, 0.6, 0.3, 0.8, 0.2, 0.1])
    labels = np.array([1, 1, 1, 0, 0, 0])
    accuracy, threshold = best_threshold_accuracy(scores, labels)
    # Accepting the top four scores (0.9, 0.8, 0.6, 0.3) gets 3 genuine + 2 impostors right,
    # 5/6, and no cut does better. The threshold sits midway between 0.3 and the next, 0.2.
    assert accuracy == pytest.approx(5 / 6)
    assert threshold == pytest.approx(0.25)


def test_kfold_accuracy_uses_held_out_thresholds():
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.9, 0.8, 0.1, 0.2])
    labels = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    mean, std = kfold_accuracy(scores, labels, folds=np.array([0, 0, 0, 0, 1, 1, 1, 1]))
    assert mean == 1.0
    assert std == 0.0


def test_metrics_reject_one_class():
    with pytest.raises(ValueError, match="at least one genuine"):
        verification_metrics(np.array([0.1, 0.2]), np.array([1, 1]), folds=np.array([0, 1]))
