"""The DataGate's work: refuse a span whose Examples break the schema, and measure how far it drifted from the
last span that passed the gate.

Anomalies come from ExampleValidator's files of every split. Drift is TFDV's own comparison of this span's train
statistics with the baseline's (L-infinity distance of the categorical features' value shares, approximate
Jensen-Shannon divergence of the numeric ones' histograms), and the change of each label's prevalence, from the
ingestion reports' counts. The gate writes what it measured, and a copy of the statistics and counts, into its
profile artifact: the next span's baseline. A refused span publishes no profile, so it is never a baseline.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2

from components.dicom_example_gen.executor import LABEL_COUNTS, REPORT_FILE
from ich_model.constants import LABELS
from ich_model.examples import (
    IMAGE_SIZE,
    INTERCEPT_GROUP,
    PIXEL_SPACING_MM,
    RESCALE_INTERCEPT,
    SLICE_COUNT,
    TRAIN_SPLIT,
)

# What ExampleValidator and StatisticsGen write in each split's folder.
ANOMALIES_FILE = "SchemaDiff.pb"
STATISTICS_FILE = "FeatureStats.pb"
SPLIT_PREFIX = "Split-"
# The profile artifact: the drift measured against the baseline, and this span's statistics and label counts.
DRIFT_FILE = "drift.json"
COUNTS_FILE = "label_counts.json"
# A scanner, protocol or site change shows in these; identifiers, pixels and positions within a study do not
# describe a population. Height and width are compared as one categorical `image_size`: a histogram of sizes that
# studies share (a few distinct values) gives a Jensen-Shannon divergence near 1 when one span lacks one of them.
CATEGORICAL_DRIFT = (INTERCEPT_GROUP, IMAGE_SIZE)
NUMERIC_DRIFT = (PIXEL_SPACING_MM, RESCALE_INTERCEPT, SLICE_COUNT)
MEASURES = {anomalies_pb2.DriftSkewInfo.Measurement.L_INFTY: "L-infinity",
            anomalies_pb2.DriftSkewInfo.Measurement.JENSEN_SHANNON_DIVERGENCE: "Jensen-Shannon"}


@dataclass(frozen=True)
class DriftLimits:
    """Above these, a measure is reported as drift (and, with `block`, the span is refused)."""

    categorical: float  # L-infinity distance between the value shares of a categorical feature
    numeric: float  # approximate Jensen-Shannon divergence of a numeric feature's histograms (0..1)
    prevalence: float  # absolute change of a label's share of positive slices
    block: bool = False


class DataRefused(ValueError):
    """A span that does not train: `anomalies` maps split -> feature -> what breaks the schema; `drift` is the
    drift report when the span drifted beyond the limits and the limits block."""

    def __init__(self, anomalies: dict[str, dict[str, str]], drift: dict | None = None):
        self.anomalies, self.drift = anomalies, drift
        super().__init__(describe(anomalies) if anomalies else describe_drift(drift))


def describe(anomalies: dict[str, dict[str, str]]) -> str:
    found = sum(len(features) for features in anomalies.values())
    listed = "; ".join(f"{split}: {feature}: {what}" for split, features in anomalies.items()
                       for feature, what in features.items())
    return (f"the span's Examples break the schema in {found} place{'s' * (found != 1)} ({listed}); nothing was "
            f"trained")


def describe_drift(drift: dict) -> str:
    over = drift["over"]
    return (f"the span drifted from span {drift['baseline_span']} beyond the limits in {len(over)} "
            f"place{'s' * (len(over) != 1)} ({'; '.join(over)}); nothing was trained")


def read_anomalies(anomalies_uri: str) -> dict[str, dict[str, str]]:
    """split -> feature -> TFDV's description of each anomaly (empty: none), for every split folder."""
    found = {}
    for folder in sorted(tf.io.gfile.listdir(anomalies_uri)):
        folder = folder.rstrip("/")
        if not folder.startswith(SPLIT_PREFIX):
            continue
        proto = anomalies_pb2.Anomalies.FromString(
            tf.io.gfile.GFile(os.path.join(anomalies_uri, folder, ANOMALIES_FILE), "rb").read())
        features = {feature: info.description or info.short_description
                    for feature, info in sorted(proto.anomaly_info.items())}
        if proto.HasField("dataset_anomaly_info"):
            info = proto.dataset_anomaly_info
            features["(the split)"] = info.description or info.short_description
        if features:
            found[folder[len(SPLIT_PREFIX):]] = features
    return found


def check_anomalies(anomalies_uri: str) -> None:
    """Raises DataRefused when any split has an anomaly."""
    anomalies = read_anomalies(anomalies_uri)
    if anomalies:
        raise DataRefused(anomalies)


def _split_folder(uri: str, split: str) -> str:
    return os.path.join(uri, f"{SPLIT_PREFIX}{split}")


def _read_json(path: str):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _write_json(path: str, document) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(document, f, indent=2, sort_keys=True)


def prevalence(label_counts: dict[str, dict[str, int]]) -> dict[str, float]:
    """Each label's share of positive slices over every split of a span (ingestion report's `label_counts`)."""
    examples = sum(counts["examples"] for counts in label_counts.values())
    return {label: sum(counts[label] for counts in label_counts.values()) / examples if examples else 0.0
            for label in LABELS}


def _drift_schema(schema_path: str, limits: DriftLimits) -> schema_pb2.Schema:
    """The committed schema with TFDV's drift comparators on the features that describe a population."""
    with tf.io.gfile.GFile(schema_path) as f:
        schema = text_format.Parse(f.read(), schema_pb2.Schema())
    for feature in schema.feature:
        if feature.name in CATEGORICAL_DRIFT:
            feature.drift_comparator.infinity_norm.threshold = limits.categorical
        elif feature.name in NUMERIC_DRIFT:
            feature.drift_comparator.jensen_shannon_divergence.threshold = limits.numeric
    return schema


def measure_drift(statistics_uri: str, schema_path: str, label_counts: dict, baseline_uri: str,
                  limits: DriftLimits) -> dict:
    """This span's train statistics and label prevalence against the baseline profile's: every measure with its
    limit, and `over`, the measures beyond their limits, as sentences."""
    import tensorflow_data_validation as tfdv

    baseline = _read_json(os.path.join(baseline_uri, DRIFT_FILE))
    current = tfdv.load_stats_binary(os.path.join(_split_folder(statistics_uri, TRAIN_SPLIT), STATISTICS_FILE))
    previous = tfdv.load_stats_binary(os.path.join(_split_folder(baseline_uri, TRAIN_SPLIT), STATISTICS_FILE))
    validated = tfdv.validate_statistics(current, _drift_schema(schema_path, limits), previous_statistics=previous)
    features, over = {}, []
    for info in validated.drift_skew_info:
        name = ".".join(info.path.step)
        for measurement in info.drift_measurements:
            measure = MEASURES.get(measurement.type,
                                   anomalies_pb2.DriftSkewInfo.Measurement.Type.Name(measurement.type))
            features[name] = {"measure": measure, "value": round(measurement.value, 4),
                              "limit": measurement.threshold}
            if measurement.value > measurement.threshold:
                over.append(f"{name}: {measure} {measurement.value:.3f} > {measurement.threshold:g}")
    before, now = _read_json(os.path.join(baseline_uri, COUNTS_FILE)), label_counts
    shares_before, shares_now = prevalence(before), prevalence(now)
    labels = {}
    for label in LABELS:
        change = shares_now[label] - shares_before[label]
        labels[label] = {"baseline": round(shares_before[label], 4), "span": round(shares_now[label], 4),
                         "change": round(change, 4), "limit": limits.prevalence}
        if abs(change) > limits.prevalence:
            over.append(f"{label} prevalence {shares_before[label]:.3f} -> {shares_now[label]:.3f} "
                        f"(change {change:+.3f}, limit {limits.prevalence:g})")
    return {"baseline_span": baseline["span"], "features": features, "prevalence": labels, "over": over,
            "limits": asdict(limits)}


def gate(anomalies_uri: str, statistics_uri: str, schema_path: str, examples_uri: str, baseline_uri: str | None,
         profile_uri: str, limits: DriftLimits) -> dict:
    """Refuses a span with anomalies, or with drift beyond the limits when they block; writes the profile (the
    drift report, the train statistics, the label counts) and returns the drift report."""
    check_anomalies(anomalies_uri)
    report = _read_json(os.path.join(examples_uri, REPORT_FILE))  # the ingestion report of the span
    label_counts, span = report[LABEL_COUNTS], int(report.get("span") or 0)
    if baseline_uri and _read_json(os.path.join(baseline_uri, DRIFT_FILE)).get("examples") == examples_uri:
        baseline_uri = None  # the same Examples: a run stopped after the gate and run again, ingestion cached
    drift = (measure_drift(statistics_uri, schema_path, label_counts, baseline_uri, limits) if baseline_uri else
             {"baseline_span": None, "features": {}, "prevalence": {}, "over": [], "limits": asdict(limits)})
    if drift["over"] and limits.block:
        raise DataRefused({}, drift)
    train = _split_folder(profile_uri, TRAIN_SPLIT)
    tf.io.gfile.makedirs(train)
    tf.io.gfile.copy(os.path.join(_split_folder(statistics_uri, TRAIN_SPLIT), STATISTICS_FILE),
                     os.path.join(train, STATISTICS_FILE), overwrite=True)
    _write_json(os.path.join(profile_uri, COUNTS_FILE), label_counts)
    _write_json(os.path.join(profile_uri, DRIFT_FILE), {**drift, "span": span, "examples": examples_uri})
    return drift
