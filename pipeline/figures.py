"""Per-model figures of an evaluation, computed here once for every reader: the console table and
`last_run.json` (pipeline.summary), the decision lines of `decisions.jsonl` (pipeline.watch) and `ich report`.

A label's AUC is defined only when the slice holds both a positive and a negative of it. TFMA still reports a
number for an undefined one (0.0, which ranks nothing), so the confusion counts decide: such a label gets no AUC,
is left out of the macro AUC and is named in `undefined_auc`. The weighted log loss is TFMA's (ich_model.metrics).
"""

from __future__ import annotations

import math

from components.study_evaluator.executor import FLAGGED, LEVEL, REFINED, SLICE_LEVEL, SLICE_ONLY, STUDY_LEVEL
from ich_model.constants import LABELS
from ich_model.metrics import WEIGHTED_LOG_LOSS
from ich_model.operating_points import LEVELS, OperatingPoint
from ich_model.serving import PROBABILITIES
from pipeline.evaluation import MODEL_OUTPUTS, SENSITIVITY_AT_SPECIFICITY, SPECIFICITY_AT_SENSITIVITY

ENSEMBLE = "ensemble"
CONTEXT = "context"  # the study model's refined per-slice output
STUDY_HEAD, SLICE_MAX = "study head", "slice maximum"  # the study figures of the study head and of the ensemble
TRIAGE = (SENSITIVITY_AT_SPECIFICITY.format(90), SENSITIVITY_AT_SPECIFICITY.format(95),
          SPECIFICITY_AT_SENSITIVITY.format(95))
MACRO_AUC = "macro_auc"  # the mean AUC over the labels whose AUC is defined
UNDEFINED_AUC = "undefined_auc"  # the labels left out of it, in label order
COUNTS = ("true_positives", "false_negatives", "false_positives", "true_negatives")


def model_name(output: str) -> str:
    """A model's name in the figures: `ensemble` for the ensemble's output, else the member's output name."""
    return ENSEMBLE if output == PROBABILITIES else output


def class_key(index: int) -> str:
    """TFMA's sub key of one label of a binarized multi-label output."""
    return f"classId:{index}"


def metric_value(metrics: dict, name: str) -> float | None:
    """A metric of TFMA's loaded results (`{"doubleValue": v}`, with NaN written as the string "NaN"), or None
    when it is absent or undefined."""
    value = metrics.get(name, {}).get("doubleValue")
    if value is None or math.isnan(float(value)):
        return None
    return float(value)


def defined_auc(metrics: dict) -> float | None:
    """One label's AUC from TFMA's metrics of that label on a slice, or None when the slice holds no positive or
    no negative of it. Results without the confusion counts (evaluations from before they were configured) give
    TFMA's figure as it is."""
    if COUNTS[0] not in metrics:
        return metric_value(metrics, "auc")
    tp, fn, fp, tn = (metric_value(metrics, name) or 0.0 for name in COUNTS)
    return metric_value(metrics, "auc") if tp + fn and fp + tn else None


def model_figures(metrics: dict) -> dict:
    """One model's figures from TFMA's loaded metrics of its output on one slice ({sub key: {metric: value}}):
    each label's AUC (None where undefined), MACRO_AUC (None when no label is defined), UNDEFINED_AUC and
    WEIGHTED_LOG_LOSS."""
    figures: dict = {label: defined_auc(metrics.get(class_key(i), {})) for i, label in enumerate(LABELS)}
    defined = [figures[label] for label in LABELS if figures[label] is not None]
    figures[MACRO_AUC] = sum(defined) / len(defined) if defined else None
    figures[UNDEFINED_AUC] = [label for label in LABELS if figures[label] is None]
    figures[WEIGHTED_LOG_LOSS] = metric_value(metrics.get("", {}), WEIGHTED_LOG_LOSS)
    return figures


def overall_slice(slicing: list) -> dict:
    """The overall slice of TFMA's loaded slicing metrics or plots ([(slice key, {output: ...})])."""
    return next((values for key, values in slicing if key == ()), {})


def level_slice(slicing: list, level: str) -> dict:
    """The slice of the StudyEvaluator's rows of one `level` (SLICE_LEVEL or STUDY_LEVEL)."""
    return next((values for key, values in slicing if key == ((LEVEL, level),)), {})


def evaluation_figures(slicing_metrics: list, study_slicing_metrics: list | None = None) -> dict[str, dict]:
    """model_figures of every evaluated model (`ensemble`, `member_a`, ...) on the overall slice, and with the
    StudyEvaluator's metrics the study model's refined output (`context`) on the same slices."""
    overall = overall_slice(slicing_metrics)
    figures = {model_name(output): model_figures(overall.get(output, {})) for output in MODEL_OUTPUTS}
    if study_slicing_metrics is not None:
        figures[CONTEXT] = model_figures(level_slice(study_slicing_metrics, SLICE_LEVEL).get(REFINED, {}))
    return figures


def study_figures(study_slicing_metrics: list) -> dict[str, dict]:
    """Per study (label: any slice positive), for the study head and for the slice ensemble's maximum over the
    study's slices: model_figures (AUC per label, macro AUC) and per label the TRIAGE figures, and `studies`."""
    studies = level_slice(study_slicing_metrics, STUDY_LEVEL)
    figures = {}
    for name, output in ((STUDY_HEAD, REFINED), (SLICE_MAX, SLICE_ONLY)):
        metrics = studies.get(output, {})
        figures[name] = model_figures(metrics)
        for triage in TRIAGE:
            figures[name][triage] = {label: metric_value(metrics.get(class_key(i), {}), triage)
                                     for i, label in enumerate(LABELS)}
        figures[name]["studies"] = metric_value(metrics.get(class_key(0), {}), "example_count")
    return figures


def operating_point_figures(study_slicing_metrics: list, points: dict | None) -> dict | None:
    """What the study model's operating points give on the eval split, from TFMA's counts of its `flagged` output:
    per level and label the threshold (from `points`, the model description's operating_points), the counts, and
    sensitivity and specificity with their Wilson 95% intervals. None for a model without operating points."""
    if not points:
        return None
    figures = {"target_sensitivity": points["target_sensitivity"], "chosen_on": points["chosen_on"]}
    for level in LEVELS:
        metrics = level_slice(study_slicing_metrics, level).get(FLAGGED, {})
        figures[level] = {}
        for index, label in enumerate(LABELS):
            tp, fn, fp, tn = (int(metric_value(metrics.get(class_key(index), {}), name) or 0) for name in COUNTS)
            point = OperatingPoint(points[level][label]["threshold"], tp + fn, tn + fp, tp, tn)
            figures[level][label] = {**point.description(), "true_positives": tp, "false_negatives": fn,
                                     "false_positives": fp, "true_negatives": tn}
    return figures


def share_with_interval(share: float | None, interval) -> str:
    """A sensitivity or specificity and its interval, as the console and the report show them."""
    return "n/a" if share is None else f"{share:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def undefined_note(figures_by_model: dict[str, dict]) -> str | None:
    """The sentence that names the labels whose AUC is undefined for some model, for a table's n/a cells."""
    undefined = {label for figures in figures_by_model.values() for label in figures.get(UNDEFINED_AUC, [])}
    if not undefined:
        return None
    return (f"n/a: the AUC of {', '.join(label for label in LABELS if label in undefined)} is undefined (the eval "
            "split holds no positive or no negative of it) and left out of the macro AUC.")
