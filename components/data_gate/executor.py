"""The DataGate's work: refuse a span whose Examples break the schema, and measure how far it drifted from the
training window: the last `span_window` spans that passed the gate before it (every one with 0), what the last
runs trained on.

Anomalies come from ExampleValidator's files of every split. Drift is TFDV's own comparison (L-infinity distance
of the categorical features' value shares, approximate Jensen-Shannon divergence of the numeric ones' histograms)
of the span's statistics with the window's, and the change of each label's prevalence. Both sides come from exact
counts in the ingestion reports (every split: how many Examples hold each value of each population feature, and
each label's positives), which add up over spans where statistics protos do not. The gate writes what it measured
into its profile artifact, with the window's counts and this span's: the next span's baseline. A refused span
publishes no profile, so it is never part of a baseline.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from components.dicom_example_gen.executor import LABEL_COUNTS, POPULATION, REPORT_FILE
from ich_model.constants import LABELS
from ich_model.examples import POPULATION_CATEGORICAL, POPULATION_NUMERIC

# What ExampleValidator writes in each split's folder.
ANOMALIES_FILE = "SchemaDiff.pb"
SPLIT_PREFIX = "Split-"
# The profile artifact: the drift measured against the baseline, and the counts of the spans of the window that
# ends with this span (the next span's baseline).
DRIFT_FILE = "drift.json"
WINDOW_FILE = "window.json"
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


def name_spans(spans: list[int]) -> str:
    """'span 2', 'spans 1-3', 'spans 1, 3 and 4'."""
    if len(spans) == 1:
        return f"span {spans[0]}"
    if spans == list(range(spans[0], spans[-1] + 1)):
        return f"spans {spans[0]}-{spans[-1]}"
    return f"spans {', '.join(map(str, spans[:-1]))} and {spans[-1]}"


def describe_drift(drift: dict) -> str:
    over = drift["over"]
    return (f"the span drifted from {name_spans(drift['baseline_spans'])} beyond the limits in {len(over)} "
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


def _read_json(path: str):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _write_json(path: str, document) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(document, f, indent=2, sort_keys=True)


def prevalence(label_counts: list[dict[str, dict[str, int]]]) -> dict[str, float]:
    """Each label's share of positive slices over every split of the spans (ingestion reports' `label_counts`)."""
    counts = [split for span in label_counts for split in span.values()]
    examples = sum(split["examples"] for split in counts)
    return {label: sum(split[label] for split in counts) / examples if examples else 0.0 for label in LABELS}


def population_statistics(populations: list[dict]) -> statistics_pb2.DatasetFeatureStatisticsList:
    """TFDV's statistics of the population features of every split of the spans whose ingestion reports'
    `population` counts are given: each feature's values, repeated as counted, through TFDV's own generator."""
    import pandas as pd
    import tensorflow_data_validation as tfdv

    statistics = statistics_pb2.DatasetFeatureStatisticsList()
    dataset = statistics.datasets.add()
    for name in (*POPULATION_CATEGORICAL, *POPULATION_NUMERIC):
        counts = Counter()
        for splits in populations:
            for split in splits.values():
                counts.update(dict((value, n) for value, n in split.get(name, [])))
        if not counts:
            continue
        values = np.repeat(np.array(list(counts), dtype=object if name in POPULATION_CATEGORICAL else None),
                           list(counts.values()))
        # One feature at a time: a missing value would otherwise have to be padded, and an integer column with
        # NaN becomes a float one.
        part = tfdv.generate_statistics_from_dataframe(pd.DataFrame({name: values}))
        dataset.features.extend(part.datasets[0].features)
        dataset.num_examples = max(dataset.num_examples, part.datasets[0].num_examples)
    return statistics


def _drift_schema(schema_path: str, limits: DriftLimits) -> schema_pb2.Schema:
    """The committed schema with TFDV's drift comparators on the features that describe a population."""
    with tf.io.gfile.GFile(schema_path) as f:
        schema = text_format.Parse(f.read(), schema_pb2.Schema())
    for feature in schema.feature:
        if feature.name in POPULATION_CATEGORICAL:
            feature.drift_comparator.infinity_norm.threshold = limits.categorical
        elif feature.name in POPULATION_NUMERIC:
            feature.drift_comparator.jensen_shannon_divergence.threshold = limits.numeric
    return schema


def measure_drift(span: dict, window: list[dict], schema_path: str, limits: DriftLimits) -> dict:
    """A span's counts (a window entry: `span`, `label_counts`, `population`) against the window's: every measure
    with its limit, and `over`, the measures beyond their limits, as sentences."""
    import tensorflow_data_validation as tfdv

    current = population_statistics([span[POPULATION]])
    previous = population_statistics([entry[POPULATION] for entry in window])
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
    shares_before = prevalence([entry[LABEL_COUNTS] for entry in window])
    shares_now = prevalence([span[LABEL_COUNTS]])
    labels = {}
    for label in LABELS:
        change = shares_now[label] - shares_before[label]
        labels[label] = {"baseline": round(shares_before[label], 4), "span": round(shares_now[label], 4),
                         "change": round(change, 4), "limit": limits.prevalence}
        if abs(change) > limits.prevalence:
            over.append(f"{label} prevalence {shares_before[label]:.3f} -> {shares_now[label]:.3f} "
                        f"(change {change:+.3f}, limit {limits.prevalence:g})")
    return {"baseline_spans": [entry["span"] for entry in window], "features": features, "prevalence": labels,
            "over": over, "limits": asdict(limits)}


def read_window(profile_uri: str | None) -> list[dict]:
    """The window entries a profile holds (none without a profile, or for one written before profiles held
    counts)."""
    if not profile_uri:
        return []
    path = os.path.join(profile_uri, WINDOW_FILE)
    if not tf.io.gfile.exists(path):
        logging.warning("DataGate: the baseline profile %s holds no span counts (written by an earlier version); "
                        "this span is not compared for drift", profile_uri)
        return []
    return _read_json(path)["spans"]


def gate(anomalies_uri: str, schema_path: str, examples_uri: str, baseline_uri: str | None, profile_uri: str,
         limits: DriftLimits, span_window: int) -> dict:
    """Refuses a span with anomalies, or with drift beyond the limits when they block; else writes the profile
    (the drift report, and the counts of the last `span_window` passed spans up to this one, 0: all) and returns
    the drift report. The baseline is the window of the last profile (`baseline_uri`), without this span's own
    earlier pass (a span run again is not compared with itself)."""
    check_anomalies(anomalies_uri)
    report = _read_json(os.path.join(examples_uri, REPORT_FILE))  # the ingestion report of the span
    span = {"span": int(report.get("span") or 0), "examples": examples_uri, LABEL_COUNTS: report[LABEL_COUNTS],
            POPULATION: report.get(POPULATION, {})}
    window = [entry for entry in read_window(baseline_uri) if entry["span"] != span["span"]]
    drift = (measure_drift(span, window, schema_path, limits) if window else
             {"baseline_spans": [], "features": {}, "prevalence": {}, "over": [], "limits": asdict(limits)})
    if drift["over"] and limits.block:
        raise DataRefused({}, drift)
    kept = [entry for entry in window if not span_window or entry["span"] > span["span"] - span_window]
    _write_json(os.path.join(profile_uri, WINDOW_FILE), {"spans": [*kept, span]})
    _write_json(os.path.join(profile_uri, DRIFT_FILE), {**drift, "span": span["span"], "examples": examples_uri})
    return drift
