"""The RSNA 2019 competition metric, in numpy."""

from __future__ import annotations

import numpy as np

from ich_model.constants import ANY, LABELS

# `any` counts twice, each subtype once (the winners' code and leaderboard probing agree on 2:1).
LABEL_WEIGHTS = np.array([2.0 if name == ANY else 1.0 for name in LABELS])
EPSILON = 1e-7  # probabilities are clipped into [EPSILON, 1 - EPSILON], as the competition kernels did


def weighted_log_loss(labels, probabilities) -> float:
    """Weighted multi-label log loss: the weighted mean of every (slice, label) binary cross-entropy, normalised
    by the sum of the weights. `labels` and `probabilities` are [N, 6] in the project's label order."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPSILON, 1.0 - EPSILON)
    if y.shape != p.shape or y.ndim != 2 or y.shape[1] != len(LABELS):
        raise ValueError(f"expected labels and probabilities of shape [N, {len(LABELS)}], got {y.shape} and {p.shape}")
    losses = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
    weights = np.broadcast_to(LABEL_WEIGHTS, y.shape)
    return float((losses * weights).sum() / weights.sum())
