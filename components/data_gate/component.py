"""DataGate: stops a span whose Examples break the committed schema (or, when configured to, drifted too far from
the training window, the last spans that passed it) before anything trains on it.

ExampleValidator writes its anomalies and lets the run go on; the Transform and, through it, the Trainers wait on
this gate, which fails the run with DataRefused naming each anomaly or drift (pipeline/local_runner.py turns that
into a refused span, and `ich watch` records it as the span's decision). A span that passes gets a profile: what
its drift from the baseline measured, and the counts of the window it closes, which the next span is compared with.
"""

from tfx import types
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import ExampleAnomalies, Examples, Schema
from tfx.utils import io_utils

from components.data_gate.executor import DriftLimits, gate

PASSED_EXAMPLES = "examples"  # the SpanProfile property naming the Examples that passed


class SpanProfile(types.Artifact):
    """What the DataGate measured of a span that passed it (drift.json), with the counts of the training window
    that ends with it (window.json): the next span's drift baseline. Its `examples` property is the URI of the
    Examples that passed, which the span window resolver takes as proof that they may train."""

    TYPE_NAME = "ich.SpanProfile"


@component
def DataGate(  # noqa: N802 - TFX components are named like classes
        anomalies: InputArtifact[ExampleAnomalies], schema: InputArtifact[Schema], examples: InputArtifact[Examples],
        profile: OutputArtifact[SpanProfile], categorical_drift_limit: Parameter[float],
        numeric_drift_limit: Parameter[float], prevalence_drift_limit: Parameter[float],
        drift_blocks_training: Parameter[bool], span_window: Parameter[int],
        baseline_profile: InputArtifact[SpanProfile] = None) -> None:
    gate(anomalies.uri, io_utils.get_only_uri_in_dir(schema.uri), examples.uri,
         baseline_profile.uri if baseline_profile is not None else None, profile.uri,
         DriftLimits(categorical_drift_limit, numeric_drift_limit, prevalence_drift_limit, drift_blocks_training),
         span_window)
    profile.set_string_custom_property(PASSED_EXAMPLES, examples.uri)
