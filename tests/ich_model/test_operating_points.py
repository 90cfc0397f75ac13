"""Operating points against sklearn's ROC curve and scipy's Wilson interval."""

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import roc_curve

from ich_model.constants import LABELS
from ich_model.operating_points import (
    DEFAULT_THRESHOLD,
    LEVELS,
    SLICE_LEVEL,
    STUDY_LEVEL,
    OperatingPoints,
    choose,
    flags,
    thresholds,
    wilson_interval,
)


def sklearn_lowest_false_positive_rate(labels, scores, target: float) -> float:
    """The lowest false-positive rate of any threshold whose sensitivity reaches `target`, from sklearn's ROC."""
    fpr, tpr, _ = roc_curve(labels, scores)
    return float(fpr[tpr >= target - 1e-12].min())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_the_threshold_reaches_the_target_at_sklearn_s_lowest_false_positive_rate(seed, target):
    rng = np.random.default_rng(seed)
    positives = int(rng.integers(3, 40))
    labels = np.r_[np.ones(positives), np.zeros(int(rng.integers(10, 200)))].astype(int)
    # Overlapping classes with ties (rounded scores), as a model's probabilities give them.
    scores = np.round(1 / (1 + np.exp(-(rng.normal(0, 1.2, len(labels)) + 1.5 * labels))), 2)
    point = choose(scores, labels, target)
    flagged = scores >= point.threshold
    assert point.true_positives == int(flagged[labels == 1].sum())
    assert point.true_negatives == int((~flagged[labels == 0]).sum())
    assert point.sensitivity >= target
    assert 1 - point.specificity == pytest.approx(sklearn_lowest_false_positive_rate(labels, scores, target))
    # Halfway to the next lower score: nothing scores within the margin on either side.
    assert not np.any(np.isclose(scores, point.threshold))


def test_a_label_without_a_positive_gets_no_threshold_and_the_default_stands_in():
    point = choose([0.1, 0.7, 0.3], [0, 0, 0], 0.95)
    assert point.threshold is None and point.sensitivity is None and point.negatives == 3
    scores = np.tile([[0.2, 0.4, 0.6, 0.8, 0.3, 0.9]], (4, 1))
    labels = np.zeros((4, len(LABELS)), int)
    labels[:, -1] = [1, 0, 1, 0]
    scores[:, -1] = [0.9, 0.2, 0.7, 0.1]
    points = OperatingPoints.fit({SLICE_LEVEL: 0.9, STUDY_LEVEL: 0.95}, {level: scores for level in LEVELS},
                                 {level: labels for level in LEVELS})
    description = {"operating_points": points.description()}
    expected = [DEFAULT_THRESHOLD] * (len(LABELS) - 1) + [(0.7 + 0.2) / 2]
    assert thresholds(description, STUDY_LEVEL) == pytest.approx(expected)
    assert description["operating_points"][STUDY_LEVEL]["any"]["sensitivity"] == 1.0
    assert description["operating_points"][STUDY_LEVEL]["epidural"]["threshold"] is None
    # A model exported without operating points flags at the default threshold.
    assert thresholds({}, SLICE_LEVEL) == pytest.approx([DEFAULT_THRESHOLD] * len(LABELS))
    assert flags(scores[0], thresholds({}, SLICE_LEVEL)).tolist() == [False, False, True, True, False, True]


@pytest.mark.parametrize(("successes", "trials"), [(0, 5), (3, 7), (19, 20), (20, 20), (57, 400)])
def test_the_wilson_interval_is_scipy_s(successes, trials):
    expected = binomtest(successes, trials).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson_interval(successes, trials) == pytest.approx((expected.low, expected.high), abs=1e-6)
    assert wilson_interval(0, 0) is None


def test_a_target_outside_0_to_1_is_refused():
    with pytest.raises(ValueError, match="target sensitivity"):
        choose([0.5], [1], 0.0)
