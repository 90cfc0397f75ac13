"""DataGate: stops a span whose Examples break the committed schema before anything trains on it.

ExampleValidator writes its anomalies and lets the run go on; the Transform and, through it, the Trainers wait on
this gate, which fails the run with DataRefused naming each anomaly (pipeline/local_runner.py turns that into a
refused span, and `ich watch` records it as the span's decision).
"""

from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import ExampleAnomalies

from components.data_gate.executor import check_anomalies


@component
def DataGate(anomalies: InputArtifact[ExampleAnomalies]) -> None:  # noqa: N802 - TFX components are named like classes
    check_anomalies(anomalies.uri)
