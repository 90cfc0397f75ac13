"""pipeline.yaml: the committed Kubeflow Pipelines v2 spec is what `ich compile` writes today, parses into
kfp's PipelineSpec proto, loads in kfp, and runs every component from the project's image."""

from __future__ import annotations

from pathlib import Path

import kfp
import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipeline.configs import CONTAINER_IMAGE, preset
from pipeline.data_checks import IMAGE_SCHEMA_FILE, SCHEMA_FILE
from pipeline.kubeflow_runner import DEFAULT_OUTPUT, cluster_config, compile_pipeline

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / DEFAULT_OUTPUT
# The latest-blessed-model resolver compiles to two KFP resolver tasks (its model and its blessing query).
BASELINE_MODEL_TASK = "latest_blessed_model_resolver-model-resolver"
BASELINE_TASKS = {"latest_blessed_model_resolver-model-blessing-resolver", BASELINE_MODEL_TASK}
RESOLVERS = {"latest_transform_cache_resolver", "latest_span_profile_resolver"}
TASKS = {"DicomExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "DataGate", *RESOLVERS,
         "Transform", "trainer_a", "trainer_b", "trainer_c", "Ensemble", "Evaluator", "StudySequenceGen",
         "context_trainer", "StudyEvaluator", "Pusher", *BASELINE_TASKS}


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
    # The study model is published, blessed by the StudyEvaluator against the latest blessed model.
    assert set(spec.root.dag.tasks["Pusher"].dependent_tasks) == {"context_trainer", "StudyEvaluator"}
    assert set(spec.root.dag.tasks["StudyEvaluator"].dependent_tasks) == {
        "DicomExampleGen", "context_trainer", BASELINE_MODEL_TASK}
    # Nothing trains before the DataGate passed the span; the schema is the committed file, where the image has it.
    assert set(spec.root.dag.tasks["Transform"].dependent_tasks) >= {"DataGate", "ImportSchemaGen"}
    # The gate reads the anomalies, and measures drift from the window's counts in the profile that the last gate
    # which passed wrote (with `span_window` 1 on Kubeflow, the last span that passed).
    assert set(spec.root.dag.tasks["DataGate"].dependent_tasks) == {
        "ExampleValidator", "ImportSchemaGen", "DicomExampleGen", "latest_span_profile_resolver"}
    assert spec.root.dag.tasks["DataGate"].inputs.parameters["span_window"].runtime_value.constant_value.int_value == 1
    assert spec.root.dag.tasks["DataGate"].inputs.artifacts["baseline_profile"].task_output_artifact.producer_task == (
        "latest_span_profile_resolver")
    schema_file = spec.root.dag.tasks["ImportSchemaGen"].inputs.parameters["schema_file"]
    assert schema_file.runtime_value.constant_value.string_value == IMAGE_SCHEMA_FILE
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "WORKDIR /pipeline\n" in dockerfile and "COPY pipeline ./pipeline\n" in dockerfile
    assert f"/pipeline/{Path(SCHEMA_FILE).relative_to(ROOT)}" == IMAGE_SCHEMA_FILE
    loaded = kfp.components.load_component_from_file(str(COMMITTED))
    assert loaded.name == spec.pipeline_info.name



def _resources(spec_path: Path) -> dict:
    """Task name -> the resources its container requests, parsed into kfp's own protos; resolver tasks, which
    run no container, are left out."""
    spec = json_format.ParseDict(yaml.safe_load(spec_path.read_text()), pipeline_spec_pb2.PipelineSpec())
    deployment = json_format.ParseDict(json_format.MessageToDict(spec.deployment_spec),
                                       pipeline_spec_pb2.PipelineDeploymentConfig())
    executors = {name: deployment.executors[spec.components[task.component_ref.name].executor_label]
                 for name, task in spec.root.dag.tasks.items()}
    return {name: executor.container.resources for name, executor in executors.items()
            if executor.HasField("container")}


def test_every_task_of_the_committed_spec_requests_cpu_and_memory_and_the_members_tasks_accelerators():
    resources = _resources(COMMITTED)
    assert set(resources) == TASKS - BASELINE_TASKS - RESOLVERS
    for task, request in resources.items():
        # Requests equal limits (guaranteed), and every task asks for at least a core and a GB.
        assert request.cpu_request == request.cpu_limit >= 1, task
        assert request.memory_request == request.memory_limit >= 1, task
    gpus = {task: (request.accelerator.type, request.accelerator.count) for task, request in resources.items()
            if request.accelerator.count}
    assert gpus == {"trainer_a": ("nvidia.com/gpu", 4), "trainer_b": ("nvidia.com/gpu", 4),
                    "trainer_c": ("nvidia.com/gpu", 4), "Ensemble": ("nvidia.com/gpu", 1),
                    "Evaluator": ("nvidia.com/gpu", 1), "StudySequenceGen": ("nvidia.com/gpu", 1),
                    "StudyEvaluator": ("nvidia.com/gpu", 1)}
    # A trainer's cores feed its GPUs: at least 12 per GPU.
    assert all(resources[t].cpu_request >= 12 * 4 for t in ("trainer_a", "trainer_b", "trainer_c"))
    # The DicomExampleGen's request survives TFX's FileBasedExampleGen step builder, which drops it.
    assert resources["DicomExampleGen"].cpu_request >= 4 and resources["DicomExampleGen"].memory_request >= 8


def test_ich_compile_sets_the_accelerators_per_trainer_and_a_cpu_preset_requests_none(tmp_path):
    from pipeline.cli import main

    out = tmp_path / "a100.yaml"
    assert main(["compile", "--out", str(out), "--accelerators", "2", "--accelerator-type", "NVIDIA_TESLA_A100"]) == 0
    resources = _resources(out)
    assert {(r.accelerator.type, r.accelerator.count) for t, r in resources.items() if t.startswith("trainer_")} == {
        ("NVIDIA_TESLA_A100", 2)}
    assert resources["Evaluator"].accelerator.count == 1 and resources["Pusher"].accelerator.count == 0

    cpu = tmp_path / "cpu.yaml"
    assert main(["compile", "--out", str(cpu), "--accelerators", "0"]) == 0
    assert not any(request.accelerator.count for request in _resources(cpu).values())
    assert all(request.cpu_request >= 1 for request in _resources(cpu).values())


def test_a_global_batch_that_does_not_divide_among_the_accelerators_is_refused(tmp_path, capsys):
    from pipeline.cli import main

    out = tmp_path / "three.yaml"
    with pytest.raises(SystemExit) as exit_:
        main(["compile", "--out", str(out), "--accelerators", "3"])
    assert exit_.value.code == 2
    assert "batch_size 512 does not divide among 3 accelerators" in capsys.readouterr().err
    assert not out.exists()
    # The trainers' batch reaches the spec as the members' settings say.
    assert main(["compile", "--out", str(out), "--accelerators", "4", "--set", "batch_size=256"]) == 0
    assert '"batch_size": 256' in out.read_text()
