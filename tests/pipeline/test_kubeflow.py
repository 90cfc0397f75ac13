"""pipeline.yaml: the committed Kubeflow Pipelines v2 spec is what `ich compile` writes today, parses into
kfp's PipelineSpec proto, loads in kfp, and runs every component from the project's image."""

from __future__ import annotations

from pathlib import Path

import kfp
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline.configs import CONTAINER_IMAGE, preset
from pipeline.kubeflow_runner import DEFAULT_OUTPUT, cluster_config, compile_pipeline

COMMITTED = Path(__file__).resolve().parents[2] / DEFAULT_OUTPUT
# The latest-blessed-model resolver compiles to two KFP resolver tasks (its model and its blessing query).
BASELINE_MODEL_TASK = "latest_blessed_model_resolver-model-resolver"
BASELINE_TASKS = {"latest_blessed_model_resolver-model-blessing-resolver", BASELINE_MODEL_TASK}
TASKS = {"DicomExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "latest_transform_cache_resolver",
         "Transform", "trainer_a", "trainer_b", "trainer_c", "Ensemble", "Evaluator", "Pusher", *BASELINE_TASKS}


def test_committed_pipeline_yaml_equals_a_fresh_compile(tmp_path):
    fresh = compile_pipeline(cluster_config(preset("cluster")), output=str(tmp_path / DEFAULT_OUTPUT))
    assert COMMITTED.read_text() == fresh.read_text(), "pipeline.yaml is stale: run `make compile`"


def test_pipeline_yaml_is_a_valid_pipeline_spec_that_kfp_loads():
    document = yaml.safe_load(COMMITTED.read_text())
    spec = json_format.ParseDict(document, pipeline_spec_pb2.PipelineSpec())  # strict: unknown fields fail
    assert set(spec.root.dag.tasks) == TASKS
    executors = document["deploymentSpec"]["executors"].values()
    images = {executor["container"]["image"] for executor in executors if "container" in executor}
    assert images == {CONTAINER_IMAGE}
    # The trainers depend on the Examples, the Transform and the base model only, so a cluster runs them side by
    # side; each warm-starts from the latest blessed ensemble (its base_model input).
    for trainer in ("trainer_a", "trainer_b", "trainer_c"):
        task = spec.root.dag.tasks[trainer]
        assert set(task.dependent_tasks) == {"DicomExampleGen", "Transform", BASELINE_MODEL_TASK}
        assert task.inputs.artifacts["base_model"].task_output_artifact.producer_task == BASELINE_MODEL_TASK
    assert spec.root.dag.tasks["Transform"].inputs.artifacts["analyzer_cache"].task_output_artifact.producer_task == (
        "latest_transform_cache_resolver")
    assert set(spec.root.dag.tasks["Pusher"].dependent_tasks) == {"Ensemble", "Evaluator"}
    loaded = kfp.components.load_component_from_file(str(COMMITTED))
    assert loaded.name == spec.pipeline_info.name
