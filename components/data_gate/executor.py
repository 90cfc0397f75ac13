"""The DataGate's work: read ExampleValidator's anomalies of every split and refuse a span that has any."""

from __future__ import annotations

import os

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2

# What ExampleValidator writes in each split's folder (tfx.components.example_validator.executor).
ANOMALIES_FILE = "SchemaDiff.pb"
SPLIT_PREFIX = "Split-"


class DataRefused(ValueError):
    """A span whose Examples break the schema; `anomalies` maps split -> feature -> what is wrong."""

    def __init__(self, anomalies: dict[str, dict[str, str]]):
        self.anomalies = anomalies
        super().__init__(describe(anomalies))


def describe(anomalies: dict[str, dict[str, str]]) -> str:
    found = sum(len(features) for features in anomalies.values())
    listed = "; ".join(f"{split}: {feature}: {what}" for split, features in anomalies.items()
                       for feature, what in features.items())
    return (f"the span's Examples break the schema in {found} place{'s' * (found != 1)} ({listed}); nothing was "
            f"trained")


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
