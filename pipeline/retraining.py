"""The parts of the DAG that carry one run over to the next, when each new batch of labelled scans is a span.

- `span_window_resolver` (node SPAN_WINDOW_RESOLVER): the Examples that the Transform and the Trainers read, the
  newest ingestion of each of the last N spans up to this run's span (N = 0: every span so far) that passed the
  DataGate; this run's own span is gated by the DataGate before anything trains. The Evaluator reads this run's
  span only.
- `transform_cache_resolver` (node TRANSFORM_CACHE_RESOLVER): the analyzer cache that the last Transform of a
  finished run wrote, so that tf.Transform analyses only the spans that it has not seen.
- `span_profile_resolver` (node SPAN_PROFILE_RESOLVER): the profile that the DataGate wrote for the last span
  that passed it: the counts of the training window, which this span's drift is measured against (none on a
  first run; a refused span has none).
- The latest blessed model of a finished run (pipeline.pipeline.latest_blessed_model_resolver) is both the
  StudyEvaluator's baseline and the model whose members each member warm-starts from.

A finished run is one whose Pusher completed (having pushed or not). A run stopped before that (a kill, a crash)
leaves outputs that the next run must not take as history: its blessed but unpushed model as the baseline and warm
start, its analyzer cache. Taking them would change the inputs of the Transform and the Trainers, so that the run
again retrains instead of finishing from the cache, against a model that never served. Locally the resolvers
filter by the metadata store's record of runs (`FinishedRunLatestArtifactStrategy`,
`FinishedRunLatestBlessedModelStrategy`).

Kubeflow Pipelines v2 compiles only the latest-artifact and latest-blessed-model strategies, so a compiled
pipeline cannot hold the span window: it trains on its run's span (`span_window` 1), and its resolvers take the
latest artifacts of any run.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.components.example_gen.utils import SPAN_PROPERTY_NAME

from components.atomic_pusher.component import PUSHER_ID
from components.data_gate.component import PASSED_EXAMPLES, SpanProfile
from components.data_gate.executor import DRIFT_FILE
from pipeline.summary import DONE, run_context_id

SPAN_WINDOW_RESOLVER = "span_window_resolver"
TRANSFORM_CACHE_RESOLVER = "latest_transform_cache_resolver"
SPAN_PROFILE_RESOLVER = "latest_span_profile_resolver"
WINDOW = "examples"  # the span window resolver's input (every Examples artifact) and output (the window)
PASSED = "profiles"  # the span window resolver's other input: every profile the DataGate wrote


def span_of(artifact) -> int:
    """An Examples artifact's span (TFX has stored it as a string in some versions, as an int in others)."""
    text = artifact.get_string_custom_property(SPAN_PROPERTY_NAME)
    return int(text) if text else artifact.get_int_custom_property(SPAN_PROPERTY_NAME)


class SpanWindowStrategy(tfx.dsl.experimental.ResolverStrategy):
    """The newest Examples artifact of each of the last `num_spans` spans up to `end_span` (0: the most recent
    span), in span order; `num_spans` 0 means every span so far. An earlier span counts only with an ingestion
    that passed the DataGate (a profile names it): a refused span never trains, in its own run or a later one. An
    older ingestion of a span (its folder changed, or a run without the cache) is left out, so that no slice is
    read twice."""

    def __init__(self, num_spans: int = 0, end_span: int = 0):
        if num_spans < 0:
            raise ValueError(f"span_window must be 0 (every span) or a positive number of spans, got {num_spans}")
        self._num_spans, self._end_span = num_spans, end_span

    def resolve_artifacts(self, store, input_dict):
        live = [artifact for artifact in input_dict.get(WINDOW, [])
                if artifact.mlmd_artifact.state == metadata_store_pb2.Artifact.LIVE]
        if not live:
            return None
        end = self._end_span or max(span_of(artifact) for artifact in live)
        start = end - self._num_spans + 1 if self._num_spans else None
        passed = {passed_examples(profile) for profile in input_dict.get(PASSED, [])}
        newest = {}
        for artifact in live:
            span = span_of(artifact)
            if span <= end and (start is None or span >= start) and (span == end or artifact.uri in passed) and (
                    span not in newest or artifact.id > newest[span].id):
                newest[span] = artifact
        # A resolver's outputs are its inputs' keys: the profiles pass through as they came.
        return {WINDOW: [newest[span] for span in sorted(newest)], PASSED: input_dict.get(PASSED, [])}


def passed_examples(profile) -> str:
    """The URI of the Examples that a DataGate profile passed: its property, or for a profile written before the
    property existed, the `examples` its drift.json names."""
    uri = profile.get_string_custom_property(PASSED_EXAMPLES)
    path = os.path.join(profile.uri, DRIFT_FILE)
    if not uri and tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            uri = json.load(f).get("examples", "")
    return uri


def finished_runs(store, pipeline_name: str) -> set[int]:
    """The pipeline runs (metadata store context IDs) whose Pusher completed or was taken from the cache."""
    node = store.get_context_by_type_and_name("node", f"{pipeline_name}.{PUSHER_ID}")
    if node is None:
        return set()
    return {run_context_id(store, execution) for execution in store.get_executions_by_context(node.id)
            if execution.last_known_state in DONE}


def from_finished_runs(store, pipeline_name: str, artifacts: list) -> list:
    """The artifacts that an execution of a finished run output (made there, or taken from the cache there)."""
    if not artifacts:
        return []
    runs = finished_runs(store, pipeline_name)
    producers: dict[int, set[int]] = {}
    for event in store.get_events_by_artifact_ids([artifact.id for artifact in artifacts]):
        if event.type == metadata_store_pb2.Event.OUTPUT:
            producers.setdefault(event.artifact_id, set()).add(event.execution_id)
    executions = store.get_executions_by_id(sorted(set().union(*producers.values())))
    in_finished_run = {execution.id for execution in executions if run_context_id(store, execution) in runs}
    return [artifact for artifact in artifacts if producers.get(artifact.id, set()) & in_finished_run]


class FinishedRunLatestArtifactStrategy(tfx.dsl.experimental.LatestArtifactStrategy):
    """TFX's latest-artifact strategy over the artifacts of finished runs only."""

    def __init__(self, pipeline_name: str):
        super().__init__()
        self._pipeline_name = pipeline_name

    def resolve_artifacts(self, store, input_dict):
        return super().resolve_artifacts(store, {key: from_finished_runs(store, self._pipeline_name, artifacts)
                                                 for key, artifacts in input_dict.items()})


class FinishedRunLatestBlessedModelStrategy(tfx.dsl.experimental.LatestBlessedModelStrategy):
    """TFX's latest-blessed-model strategy over the models of finished runs only."""

    def __init__(self, pipeline_name: str):
        super().__init__()
        self._pipeline_name = pipeline_name

    def resolve_artifacts(self, store, input_dict):
        return super().resolve_artifacts(store, {
            key: from_finished_runs(store, self._pipeline_name, artifacts)
            if artifacts and isinstance(artifacts[0], tfx.types.standard_artifacts.Model) else artifacts
            for key, artifacts in input_dict.items()})


def span_window_resolver(example_gen, data_gate_id: str, num_spans: int, end_span: int = 0):
    """The Examples of the last `num_spans` spans (0: all) up to `end_span` (0: the latest) that may train, for
    the Transform and the Trainers. It reads every run's ExampleGen output and every profile of the DataGate
    (node `data_gate_id`) by producer (a component's own output channel holds its run's artifact only), and runs
    after this run's ExampleGen."""
    resolver = tfx.dsl.Resolver(
        strategy_class=SpanWindowStrategy,
        config={"num_spans": num_spans, "end_span": end_span},
        **{WINDOW: tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples,
                                   producer_component_id=example_gen.id, output_key="examples"),
           PASSED: tfx.dsl.Channel(type=SpanProfile, producer_component_id=data_gate_id, output_key="profile")},
    ).with_id(SPAN_WINDOW_RESOLVER)
    resolver.add_upstream_node(example_gen)
    return resolver


def transform_cache_resolver(pipeline_name: str | None):
    """The analyzer cache of the last Transform of a finished run of `pipeline_name` (none on a first run); of
    any run when `pipeline_name` is None (Kubeflow)."""
    strategy = ({"strategy_class": tfx.dsl.experimental.LatestArtifactStrategy} if pipeline_name is None else
                {"strategy_class": FinishedRunLatestArtifactStrategy, "config": {"pipeline_name": pipeline_name}})
    return tfx.dsl.Resolver(
        **strategy, cache=tfx.dsl.Channel(type=tfx.types.standard_artifacts.TransformCache),
    ).with_id(TRANSFORM_CACHE_RESOLVER)


def span_profile_resolver(data_gate_id: str):
    """The newest profile the DataGate (node `data_gate_id`) wrote: by producer, since this run's gate has not
    written one when its input is resolved."""
    return tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
        profile=tfx.dsl.Channel(type=SpanProfile, producer_component_id=data_gate_id, output_key="profile"),
    ).with_id(SPAN_PROFILE_RESOLVER)
