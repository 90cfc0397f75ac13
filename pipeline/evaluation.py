"""The Evaluator's TFMA configuration: per-subtype metrics for the ensemble and each member, the slices a
reviewer reads, and the blessing gates (floors, a ceiling and no regression against the last blessed model).

The ensemble SavedModel returns the ensemble's `probabilities` and each member's (`member_a`, ...), so one
evaluation scores all of them on the same Examples. Only the ensemble's overall figures gate the blessing.
Its `out_of_distribution` flag has no label: its share per slice (ich_model.metrics.FlaggedShare) is reported,
never gated, so that a new span from a new scanner shows in the slice of its span.
"""

from __future__ import annotations

import tensorflow_model_analysis as tfma

from ich_model.constants import LABELS
from ich_model.examples import IMAGE_SIZE, INTERCEPT_GROUP, LABEL, SPAN
from ich_model.members import MEMBERS
from ich_model.preprocessing import POSITION_BAND
from ich_model.serving import OUT_OF_DISTRIBUTION, PROBABILITIES, member_output
from pipeline.configs import PipelineConfig

EVAL_SPLIT = "eval"
MODEL_OUTPUTS = (PROBABILITIES, *(member_output(name) for name in MEMBERS))
SLICE_FEATURES = (INTERCEPT_GROUP, IMAGE_SIZE, POSITION_BAND, SPAN)


def _class_ids(indices) -> tfma.BinarizationOptions:
    return tfma.BinarizationOptions(class_ids={"values": list(indices)})


def _ranking_metrics() -> list[tfma.MetricConfig]:
    """Per-label figures that also have a macro average over the labels."""
    return [tfma.MetricConfig(class_name=name) for name in ("AUC", "AUCPrecisionRecall", "BinaryCrossEntropy")]


def _operating_point_metrics(threshold: float) -> list[tfma.MetricConfig]:
    """Per-label counts, calibration, the ROC and PR curves (ConfusionMatrixPlot) and the confusion figures at
    the operating threshold (no macro average: plots and counts do not average)."""
    at_threshold = f'{{"thresholds": [{threshold}]}}'
    return [
        tfma.MetricConfig(class_name="ExampleCount"),
        tfma.MetricConfig(class_name="Calibration"),
        tfma.MetricConfig(class_name="CalibrationPlot"),
        tfma.MetricConfig(class_name="ConfusionMatrixPlot"),
        *(tfma.MetricConfig(class_name=name, config=at_threshold) for name in (
            "Precision", "Recall", "Specificity", "TruePositives", "FalsePositives", "TrueNegatives",
            "FalseNegatives")),
    ]


def _overall(threshold: tfma.MetricThreshold) -> tfma.PerSliceMetricThreshold:
    """A gate on the overall slice only (a plain `threshold` would gate every slice, small ones included)."""
    return tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)


def _higher_is_better(floor: float | None, tolerance: float) -> tfma.MetricThreshold:
    return tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": floor}) if floor is not None else None,
        change_threshold=tfma.GenericChangeThreshold(direction=tfma.MetricDirection.HIGHER_IS_BETTER,
                                                     absolute={"value": -tolerance}))


def blessing_specs(config: PipelineConfig) -> list[tfma.MetricsSpec]:
    """The gates, on the ensemble's output and the overall slice only: an AUC floor per label (each its own
    binarized spec, since one spec's threshold applies to all of its classes) that must also not fall more than
    the tolerance below the baseline's, and the weighted log loss under its ceiling and not above the
    baseline's beyond its tolerance."""
    specs = [
        tfma.MetricsSpec(
            output_names=[PROBABILITIES], binarize=_class_ids([index]),
            metrics=[tfma.MetricConfig(class_name="AUC", per_slice_thresholds=[_overall(_higher_is_better(
                config.auc_floors[name], config.auc_regression_tolerance))])])
        for index, name in enumerate(LABELS)
    ]
    specs.append(tfma.MetricsSpec(
        output_names=[PROBABILITIES],
        metrics=[tfma.MetricConfig(
            class_name="WeightedLogLoss", module="ich_model.metrics", per_slice_thresholds=[_overall(
                tfma.MetricThreshold(
                    value_threshold=tfma.GenericValueThreshold(upper_bound={"value": config.max_weighted_log_loss}),
                    change_threshold=tfma.GenericChangeThreshold(
                        direction=tfma.MetricDirection.LOWER_IS_BETTER,
                        absolute={"value": config.log_loss_regression_tolerance})))])]))
    return specs


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    # Only the scored outputs have a label; FlaggedShare reads no label, so OUT_OF_DISTRIBUTION needs no entry.
    label_keys = {output: LABEL for output in MODEL_OUTPUTS}
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_keys=label_keys,
                                    preprocessing_function_names=["transform_features"])],
        slicing_specs=[tfma.SlicingSpec(), *(tfma.SlicingSpec(feature_keys=[name]) for name in SLICE_FEATURES)],
        metrics_specs=[
            # Every label of every output, on every slice; the macro average over the six labels.
            tfma.MetricsSpec(output_names=list(MODEL_OUTPUTS), binarize=_class_ids(range(len(LABELS))),
                             aggregate=tfma.AggregationOptions(
                                 macro_average=True, class_weights={i: 1.0 for i in range(len(LABELS))}),
                             metrics=_ranking_metrics()),
            tfma.MetricsSpec(output_names=list(MODEL_OUTPUTS), binarize=_class_ids(range(len(LABELS))),
                             metrics=_operating_point_metrics(config.operating_threshold)),
            tfma.MetricsSpec(output_names=list(MODEL_OUTPUTS), metrics=[
                tfma.MetricConfig(class_name="WeightedLogLoss", module="ich_model.metrics"),
                tfma.MetricConfig(class_name="MultiLabelConfusionMatrixPlot",
                                  config=f'{{"thresholds": [{config.operating_threshold}]}}'),
            ]),
            tfma.MetricsSpec(output_names=[OUT_OF_DISTRIBUTION], metrics=[
                tfma.MetricConfig(class_name="FlaggedShare", module="ich_model.metrics")]),
            *blessing_specs(config),
        ],
    )
