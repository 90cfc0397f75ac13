"""The RSNA weighted log loss (numpy, and the Keras metric TFMA computes) against sklearn's log_loss with
sample weights; the flagged share (a TFMA metric) against numpy's weighted mean per slice."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that
from scipy.special import expit, logit
from sklearn.metrics import log_loss
from tensorflow_model_analysis import constants as tfma_constants
from tensorflow_model_analysis.metrics import metric_util

from ich_model.metrics import (
    FLAGGED_SHARE,
    FlaggedShare,
    WeightedLogLoss,
    WeightedLogLossStandardError,
    weighted_log_loss,
)
from ich_model.serving import OUT_OF_DISTRIBUTION, PROBABILITIES


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


def test_keras_metric_for_tfma_accumulates_batches_to_the_sklearn_figure():
    rng = np.random.default_rng(1)
    labels = (rng.random((300, 6)) < 0.15).astype(np.int64)
    probabilities = rng.uniform(0.0, 1.0, (300, 6)).astype(np.float32)
    probabilities[:3, :3] = [0.0, 1.0, 1.0]  # exact 0 and 1: clipped, never infinite
    metric = WeightedLogLoss()
    for start in range(0, 300, 64):  # uneven last batch, as TFMA feeds it
        metric.update_state(labels[start:start + 64], probabilities[start:start + 64])
    clipped = np.clip(probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    expected = log_loss(labels.ravel(), clipped.ravel(), sample_weight=np.tile([1, 1, 1, 1, 1, 2], 300))
    assert float(metric.result()) == pytest.approx(expected, rel=1e-6)
    metric.reset_state()
    assert float(metric.result()) == 0.0


def test_keras_metric_with_a_logit_shift_scores_the_shifted_probabilities_as_sklearn_does():
    """The Trainer's checkpoint metric: a member's output moved to the data's prevalence before it is scored."""
    rng = np.random.default_rng(2)
    labels = (rng.random((250, 6)) < 0.1).astype(np.int64)
    probabilities = rng.uniform(0.02, 0.98, (250, 6)).astype(np.float32)
    shift = np.array([-2.5, -1.0, 0.0, 0.5, -3.0, -1.5])
    metric = WeightedLogLoss(logit_shift=shift)
    for start in range(0, 250, 64):
        metric.update_state(labels[start:start + 64], probabilities[start:start + 64])
    shifted = expit(logit(probabilities.astype(np.float64)) + shift)
    expected = log_loss(labels.ravel(), shifted.ravel(), sample_weight=np.tile([1, 1, 1, 1, 1, 2], 250))
    assert float(metric.result()) == pytest.approx(expected, rel=1e-6)
    unshifted = log_loss(labels.ravel(), probabilities.ravel().astype(np.float64),
                         sample_weight=np.tile([1, 1, 1, 1, 1, 2], 250))
    assert abs(float(metric.result()) - unshifted) > 0.05  # the shift changes the figure


def test_standard_error_metric_is_the_spread_of_per_slice_sklearn_log_losses():
    rng = np.random.default_rng(4)
    labels = (rng.random((180, 6)) < 0.2).astype(np.int64)
    probabilities = rng.uniform(0.02, 0.98, (180, 6)).astype(np.float32)
    shift = np.array([-1.0, 0.5, 0.0, -2.0, 1.0, -0.5])
    metric = WeightedLogLossStandardError(logit_shift=shift)
    for start in range(0, 180, 50):
        metric.update_state(labels[start:start + 50], probabilities[start:start + 50])
    shifted = expit(logit(probabilities.astype(np.float64)) + shift)
    per_slice = [log_loss(labels[i], shifted[i], labels=[0, 1], sample_weight=[1, 1, 1, 1, 1, 2])
                 for i in range(180)]
    assert float(metric.result()) == pytest.approx(np.std(per_slice, ddof=1) / np.sqrt(180), rel=1e-6)
    with pytest.raises(ValueError, match="unweighted slices"):
        metric.update_state(labels[:2], probabilities[:2], sample_weight=np.ones(2))


@pytest.mark.parametrize("labelled", [False, True], ids=["no labels", "the other outputs' labels"])
def test_flagged_share_is_the_weighted_share_of_flagged_examples_per_slice_labelled_or_not(labelled):
    """TFMA's metric inputs as its evaluator builds them for this metric (no labels; or, as in the pipeline, the
    labels of the outputs that have them), through the metric's own computation, per slice; a model without the
    output (a baseline exported before the score) gives NaN."""
    rng = np.random.default_rng(5)
    n = 90
    slice_keys = [(), (("span", 1),), (("span", 2),)]
    slices = rng.integers(0, len(slice_keys), n)
    flags = (rng.random(n) < np.where(slices == 2, 0.6, 0.1)).astype(np.float32)
    weights = rng.uniform(0.2, 2.0, n)
    computation, = FlaggedShare().computations(model_names=["candidate"], output_names=[OUT_OF_DISTRIBUTION],
                                               example_weighted=True)
    baseline, = FlaggedShare().computations(model_names=["baseline"], output_names=[OUT_OF_DISTRIBUTION],
                                            example_weighted=True)
    preprocessor, = computation.preprocessors
    assert tfma_constants.LABELS_KEY not in preprocessor.include_filter
    extracts = [{"predictions": {"candidate": {OUT_OF_DISTRIBUTION: np.array([flags[i]]),
                                               PROBABILITIES: np.full(6, 0.5, np.float32)},
                                 "baseline": {PROBABILITIES: np.full(6, 0.5, np.float32)}},
                 "example_weights": np.array([weights[i]])} for i in range(n)]
    if labelled:
        for x in extracts:
            x["labels"] = {PROBABILITIES: np.zeros(6, np.float32)}

    with beam.Pipeline() as pipeline:
        inputs = (pipeline
                  | beam.Create([(slice_keys[s], x) for s, x in zip(slices, extracts, strict=True)])
                  | beam.MapTuple(lambda key, x: (
                      key, metric_util.to_standard_metric_inputs(x, include_labels=labelled))))
        candidate = inputs | "candidate" >> beam.CombinePerKey(computation.combiner)
        nothing = inputs | "baseline" >> beam.CombinePerKey(baseline.combiner)

        def check_candidate(got):
            expected = {key: np.average(flags[slices == s], weights=weights[slices == s])
                        for s, key in enumerate(slice_keys)}
            assert {key: value[computation.keys[0]] for key, value in got} == pytest.approx(expected, rel=1e-9)
            assert computation.keys[0].name == FLAGGED_SHARE

        def check_baseline(got):
            assert len(got) == 3 and all(np.isnan(value[baseline.keys[0]]) for _, value in got)

        assert_that(candidate, check_candidate, label="candidate share")
        assert_that(nothing, check_baseline, label="baseline without the output")
