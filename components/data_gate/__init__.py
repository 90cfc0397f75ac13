"""DataGate: ExampleValidator's anomalies -> the span trains, or the run stops with them named."""

from components.data_gate.component import DataGate

__all__ = ["DataGate"]
