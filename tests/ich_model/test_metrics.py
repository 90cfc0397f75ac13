"""The RSNA weighted log loss against sklearn's log_loss with sample weights."""

import numpy as np
import pytest
from sklearn.metrics import log_loss

from ich_model.metrics import weighted_log_loss


def test_weighted_log_loss_is_sklearn_log_loss_with_any_weighted_twice():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 6)) < 0.2).astype(int)
    probabilities = rng.uniform(0.01, 0.99, (200, 6))
    weights = np.tile([1, 1, 1, 1, 1, 2], 200)  # project order: five subtypes, then any
    expected = log_loss(labels.ravel(), probabilities.ravel(), sample_weight=weights)
    assert weighted_log_loss(labels, probabilities) == pytest.approx(expected, rel=1e-12)


def test_any_counts_twice():
    labels = np.zeros((1, 6))
    only_any_wrong = np.full((1, 6), 1e-9)
    only_any_wrong[0, 5] = 0.9
    only_subtype_wrong = np.full((1, 6), 1e-9)
    only_subtype_wrong[0, 0] = 0.9
    assert weighted_log_loss(labels, only_any_wrong) == pytest.approx(
        2 * weighted_log_loss(labels, only_subtype_wrong), rel=1e-3)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"shape \[N, 6\]"):
        weighted_log_loss(np.zeros((3, 5)), np.zeros((3, 5)))
