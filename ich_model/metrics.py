"""The RSNA 2019 competition metric: in numpy (`weighted_log_loss`) and as a Keras metric for TFMA
(`WeightedLogLoss`, named in the EvalConfig by class name and this module); and `FlaggedShare`, the TFMA metric
of the share of slices that the ensemble flags out of distribution."""

from __future__ import annotations

from collections.abc import Mapping

import apache_beam as beam
import numpy as np
import tensorflow as tf
from tensorflow_model_analysis import constants as tfma_constants
from tensorflow_model_analysis.metrics import metric_types, metric_util

from ich_model.constants import ANY, LABELS, NUM_LABELS

# `any` counts twice, each subtype once (the winners' code and leaderboard probing agree on 2:1).
LABEL_WEIGHTS = np.array([2.0 if name == ANY else 1.0 for name in LABELS])
WEIGHTED_LOG_LOSS = "weighted_log_loss"  # the metric's name in TFMA results and run summaries
FLAGGED_SHARE = "flagged_share"  # FlaggedShare's name in TFMA results
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


class WeightedLogLoss(tf.keras.metrics.Metric):
    """`weighted_log_loss` accumulated over batches (float64 sums, so a large eval set loses no precision)."""

    def __init__(self, name: str = WEIGHTED_LOG_LOSS, logit_shift=None, **kwargs):
        """`logit_shift` ([6], optional) is added to the log-odds of every prediction before it is scored: the
        Trainer scores a member, whose output is at its balanced batches' prevalence, as it will be exported."""
        super().__init__(name=name, **kwargs)
        self.logit_shift = None if logit_shift is None else [float(v) for v in np.asarray(logit_shift).ravel()]
        self.loss_sum = self.add_weight(name="loss_sum", shape=(), initializer="zeros", dtype=tf.float64)
        self.weight_sum = self.add_weight(name="weight_sum", shape=(), initializer="zeros", dtype=tf.float64)

    def _weighted_losses(self, y_true, y_pred, sample_weight=None):
        """[B, 6] weighted binary cross-entropies and their [B, 6] weights."""
        y = tf.reshape(tf.cast(y_true, tf.float64), [-1, NUM_LABELS])
        p = tf.clip_by_value(tf.reshape(tf.cast(y_pred, tf.float64), [-1, NUM_LABELS]), EPSILON, 1.0 - EPSILON)
        if self.logit_shift is not None:
            shifted = tf.math.log(p) - tf.math.log(1.0 - p) + tf.constant(self.logit_shift, tf.float64)
            p = tf.clip_by_value(tf.sigmoid(shifted), EPSILON, 1.0 - EPSILON)
        weights = tf.broadcast_to(tf.constant(LABEL_WEIGHTS, tf.float64), tf.shape(y))
        if sample_weight is not None:
            weights *= tf.reshape(tf.cast(sample_weight, tf.float64), [-1, 1])
        return -(y * tf.math.log(p) + (1.0 - y) * tf.math.log(1.0 - p)) * weights, weights

    def update_state(self, y_true, y_pred, sample_weight=None):
        self._add(*self._weighted_losses(y_true, y_pred, sample_weight))

    def _add(self, losses, weights):
        self.loss_sum.assign_add(tf.reduce_sum(losses))
        self.weight_sum.assign_add(tf.reduce_sum(weights))

    def result(self):
        return tf.math.divide_no_nan(self.loss_sum, self.weight_sum)

    def reset_state(self):
        self.loss_sum.assign(0.0)
        self.weight_sum.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "logit_shift": self.logit_shift}


class WeightedLogLossStandardError(WeightedLogLoss):
    """The standard error of `WeightedLogLoss`'s figure on an unweighted set of slices: the sample standard
    deviation of the slices' own weighted log losses over the square root of their number. The Trainer uses it
    to tell a better checkpoint from eval-split noise (ich_model.members.kept_evaluation). Every slice carries
    the same label weights, so the slice count and the mean come from the parent's sums; only the sum of squared
    slice losses is added."""

    def __init__(self, name: str = f"{WEIGHTED_LOG_LOSS}_se", logit_shift=None, **kwargs):
        super().__init__(name=name, logit_shift=logit_shift, **kwargs)
        self.square_sum = self.add_weight(name="square_sum", shape=(), initializer="zeros", dtype=tf.float64)

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("WeightedLogLossStandardError is defined for unweighted slices only")
        losses, weights = self._weighted_losses(y_true, y_pred)
        self._add(losses, weights)
        per_slice = tf.reduce_sum(losses, axis=1) / tf.reduce_sum(weights, axis=1)
        self.square_sum.assign_add(tf.reduce_sum(tf.square(per_slice)))

    def result(self):
        count = self.weight_sum / float(LABEL_WEIGHTS.sum())
        mean = super().result()
        variance = tf.math.divide_no_nan(self.square_sum - count * tf.square(mean), count - 1.0)
        return tf.sqrt(tf.maximum(variance, 0.0) / tf.maximum(count, 1.0))

    def reset_state(self):
        super().reset_state()
        self.square_sum.assign(0.0)


class FlaggedShare(metric_types.Metric):
    """Per slice of data, the example-weighted mean of a 0/1 model output: with the ensemble's
    `out_of_distribution` (ich_model.serving), the share of slices it flags. It reads predictions and example
    weights only, so the output needs no label (and no entry in the ModelSpec's label_keys). A model without the
    output (a baseline exported before the score existed) contributes no examples: its share is NaN."""

    def __init__(self, name: str = FLAGGED_SHARE):
        super().__init__(_flagged_share_computations, name=name)


def _flagged_share_computations(name: str = FLAGGED_SHARE, model_names=None, output_names=None,
                                example_weighted: bool = False) -> metric_types.MetricComputations:
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                         example_weighted=example_weighted)
            computations.append(metric_types.MetricComputation(
                keys=[key],
                # Without the default inputs the evaluator builds the metric inputs with include_labels=False.
                preprocessors=[metric_types.StandardMetricInputsPreprocessor(
                    include_filter={tfma_constants.PREDICTIONS_KEY: {}, tfma_constants.EXAMPLE_WEIGHTS_KEY: {}},
                    include_default_inputs=False)],
                combiner=_FlaggedShareCombiner(key)))
    return computations


def _has_output(predictions, model_name: str, output_name: str) -> bool:
    for name in (model_name, output_name):
        if name:
            if not isinstance(predictions, Mapping) or name not in predictions:
                return False
            predictions = predictions[name]
    return predictions is not None


class _FlaggedShareCombiner(beam.CombineFn):
    """Accumulates (sum of weight x flag, sum of weight) in float64."""

    def __init__(self, key: metric_types.MetricKey):
        self._key = key

    def create_accumulator(self) -> tuple[float, float]:
        return 0.0, 0.0

    def add_input(self, accumulator, element: metric_types.StandardMetricInputs):
        flagged, total = accumulator
        if not _has_output(element.prediction, self._key.model_name, self._key.output_name):
            return accumulator
        # The flag has no label; the pipeline's inputs carry the other outputs' labels, which TFMA would refuse here.
        unlabelled = metric_types.StandardMetricInputs(
            {key: value for key, value in element.items() if key != tfma_constants.LABELS_KEY})
        for _, flags, weights in metric_util.to_label_prediction_example_weight(
                unlabelled, model_name=self._key.model_name, output_name=self._key.output_name,
                example_weighted=self._key.example_weighted, allow_none=True, flatten=False):
            flags = np.asarray(flags, np.float64)
            weights = np.broadcast_to(np.asarray(weights, np.float64), flags.shape)
            flagged += float(np.sum(weights * flags))
            total += float(np.sum(weights))
        return flagged, total

    def merge_accumulators(self, accumulators):
        sums = np.zeros(2)
        for accumulator in accumulators:
            sums += accumulator
        return float(sums[0]), float(sums[1])

    def extract_output(self, accumulator) -> dict[metric_types.MetricKey, float]:
        flagged, total = accumulator
        return {self._key: flagged / total if total else float("nan")}
