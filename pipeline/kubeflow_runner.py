"""`ich compile`: the pipeline as a Kubeflow Pipelines v2 spec (`pipeline.yaml`) for a GPU cluster.

The spec names one container image (built from the repository's Dockerfile) that holds this package, so the
components' dotted function paths resolve there and nothing is packaged at compile time. The metadata store is
the cluster's own.
"""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import yaml
from google.protobuf import json_format
from tfx import v1 as tfx

from components.dicom_example_gen.span_folders import SPAN_PATTERN
from pipeline.configs import CONTAINER_IMAGE, PipelineConfig
from pipeline.data_checks import IMAGE_SCHEMA_FILE
from pipeline.pipeline import create_pipeline
from pipeline.resources import task_resources

DEFAULT_OUTPUT = "pipeline.yaml"
# The cluster defaults that the committed pipeline.yaml is compiled with (`ich compile` with no options).
DEFAULT_PIPELINE_ROOT = "gs://ich-pipeline/root"
DEFAULT_INPUT_BASE = "gs://ich-pipeline/data"


def cluster_config(config: PipelineConfig, pipeline_root: str = DEFAULT_PIPELINE_ROOT,
                   input_base: str = DEFAULT_INPUT_BASE) -> PipelineConfig:
    """`config` for the cluster's roots and the schema's place in the pipeline image. Its input is span folders unless
    `config` names a pattern: the input base cannot be listed at compile time (no credentials, no network) to detect its
    layout."""
    return dataclasses.replace(
        config, pipeline_root=pipeline_root, input_base=input_base,
        input_pattern=config.input_pattern or SPAN_PATTERN, schema_file=config.schema_file or IMAGE_SCHEMA_FILE)


def compile_pipeline(config: PipelineConfig, image: str = CONTAINER_IMAGE, output: str = DEFAULT_OUTPUT) -> Path:
    """Writes the KFP v2 spec for `config` to `output` and returns its path."""
    if config.span_window != 1:
        raise ValueError(
            f"span_window={config.span_window}: a Kubeflow Pipelines v2 spec trains on its run's span only "
            "(its resolvers return one artifact, and TFX compiles no span-range resolver); set span_window=1")
    if config.id_salt:
        raise ValueError(
            "id_salt is not compiled into a spec (the spec and the cluster's metadata store would hold it): put the "
            "salt in a file the pipeline can read and set id_salt_file to it, or leave both unset to have one made "
            "under the pipeline root")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=str(out.parent), output_filename=out.name)
    pipeline = create_pipeline(config)
    resources = {component_id: need.spec(config.accelerator_type)
                 for component_id, need in task_resources(config).items()}
    for component in pipeline.components:
        if component.id in resources:
            component.with_platform_config(resources[component.id])
    runner.run(pipeline, write_out=True)
    _fill_dropped_resources(out, resources)
    return out


def _fill_dropped_resources(spec_path: Path, resources: dict) -> None:
    """TFX 1.16's step builder drops the platform config of a FileBasedExampleGen (its executor spec is built
    apart from the others'), so the DicomExampleGen's request is written into the compiled spec here, in the same
    YAML layout as TFX's writer (sort_keys), below the same header comments."""
    text = spec_path.read_text()
    header = "".join(itertools.takewhile(lambda line: line.startswith("#"), text.splitlines(keepends=True)))
    document = yaml.safe_load(text)
    executors = document["deploymentSpec"]["executors"]
    changed = False
    for component_id, spec in resources.items():
        container = executors[document["components"][component_id]["executorLabel"]]["container"]
        if "resources" not in container:
            container["resources"] = json_format.MessageToDict(spec)
            changed = True
    if changed:
        spec_path.write_text(header + yaml.dump(document, sort_keys=True))
