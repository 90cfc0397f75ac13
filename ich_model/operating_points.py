"""Operating points: per label, the probability at or above which a slice or a study is flagged, chosen on held-out
studies for a target sensitivity.

A calibrated probability of 0.5 is no triage threshold: rare subtypes seldom reach it, so it finds almost none of
them. A triage user states the sensitivity to reach instead (say 95% of the studies with a hemorrhage). For each
label and level (slice, study), `choose` takes the eval split's scores and labels and returns the highest threshold
whose sensitivity there reaches the target, set halfway down to the next lower score so that the last digits of
another run of the same model cannot move a case across it. The sensitivity and specificity it gives come with
Wilson score intervals (95%), since a few dozen positive studies leave them uncertain. A label with no positive
in the split gets no chosen threshold: `DEFAULT_THRESHOLD` stands in and the description says so.

The description of a study model holds the result (`operating_points`, OperatingPoints.description); `ich
predict`, `ich serve` and the StudyEvaluator flag with `flags` on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ich_model.constants import LABELS

SLICE_LEVEL, STUDY_LEVEL = "slice", "study"
LEVELS = (SLICE_LEVEL, STUDY_LEVEL)
# Where a label has no chosen threshold (an eval split without a positive of it, or a model exported before
# operating points): the probability that a calibrated model calls more likely than not.
DEFAULT_THRESHOLD = 0.5
WILSON_Z = 1.959964  # the standard normal's 97.5th percentile: 95% intervals


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (None for no trials)."""
    if trials == 0:
        return None
    share = successes / trials
    centre = (share + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(share * (1 - share) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class OperatingPoint:
    """One label at one level: its threshold (None: none could be chosen) and what it gives on the split it was
    chosen on."""

    threshold: float | None
    positives: int
    negatives: int
    true_positives: int
    true_negatives: int

    @property
    def sensitivity(self) -> float | None:
        return self.true_positives / self.positives if self.positives else None

    @property
    def specificity(self) -> float | None:
        return self.true_negatives / self.negatives if self.negatives else None

    def description(self) -> dict:
        return {"threshold": self.threshold, "positives": self.positives, "negatives": self.negatives,
                "sensitivity": self.sensitivity, "sensitivity_interval": wilson_interval(self.true_positives,
                                                                                         self.positives),
                "specificity": self.specificity, "specificity_interval": wilson_interval(self.true_negatives,
                                                                                         self.negatives)}


def measure(scores, labels, threshold: float | None) -> OperatingPoint:
    """What `threshold` gives on `scores` against `labels` (0/1); without a threshold, only the class counts."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    if threshold is None:
        return OperatingPoint(None, int(labels.sum()), int((~labels).sum()), 0, 0)
    return OperatingPoint(threshold, int(labels.sum()), int((~labels).sum()),
                          int((scores[labels] >= threshold).sum()), int((scores[~labels] < threshold).sum()))


def choose(scores, labels, target_sensitivity: float) -> OperatingPoint:
    """The highest threshold at which at least `target_sensitivity` of the positives score at or above it, moved
    halfway down to the next lower score; no threshold when `labels` holds no positive."""
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"a target sensitivity is in (0, 1], got {target_sensitivity}")
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    positives = np.sort(scores[labels])[::-1]
    if len(positives) == 0:
        return measure(scores, labels, None)
    needed = math.ceil(target_sensitivity * len(positives) - 1e-9)
    kth = positives[needed - 1]
    below = scores[scores < kth]
    return measure(scores, labels, float((kth + below.max()) / 2 if len(below) else kth / 2))


@dataclass(frozen=True)
class OperatingPoints:
    """Per level (slice, study) and label, the operating point chosen for that level's target sensitivity."""

    targets: dict[str, float]
    points: dict[str, dict[str, OperatingPoint]]
    chosen_on: str = "eval split"

    @classmethod
    def fit(cls, targets: dict[str, float], scores: dict[str, np.ndarray], labels: dict[str, np.ndarray],
            chosen_on: str = "eval split") -> OperatingPoints:
        """`scores` and `labels` [N, 6] per level, in label order."""
        return cls(dict(targets), {level: {name: choose(scores[level][:, index], labels[level][:, index],
                                                        targets[level]) for index, name in enumerate(LABELS)}
                                   for level in LEVELS}, chosen_on)

    def description(self) -> dict:
        return {"chosen_on": self.chosen_on, "default_threshold": DEFAULT_THRESHOLD,
                "target_sensitivity": dict(self.targets),
                **{level: {name: point.description() for name, point in self.points[level].items()}
                   for level in LEVELS}}


def thresholds(description: dict, level: str) -> np.ndarray:
    """The thresholds [6] in label order that a model's description (any kind) gives for `level`:
    DEFAULT_THRESHOLD for a label without a chosen one, and for a model without operating points."""
    chosen = (description.get("operating_points") or {}).get(level, {})
    return np.array([DEFAULT_THRESHOLD if (chosen.get(name) or {}).get("threshold") is None
                     else chosen[name]["threshold"] for name in LABELS], np.float64)


def flags(probabilities, level_thresholds: np.ndarray) -> np.ndarray:
    """Which labels are flagged: probability at or above the label's threshold ([..., 6] bool)."""
    return np.asarray(probabilities, np.float64) >= level_thresholds
