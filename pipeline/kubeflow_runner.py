"""`ich compile`: the pipeline as a Kubeflow Pipelines v2 spec (`pipeline.yaml`) for a GPU cluster.

The spec names one container image (built from the repository's Dockerfile) that holds this package, so the
components' dotted function paths resolve there and nothing is packaged at compile time. The metadata store is
the cluster's own.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tfx import v1 as tfx

from components.dicom_example_gen.span_folders import SPAN_PATTERN
from pipeline.configs import CONTAINER_IMAGE, PipelineConfig
from pipeline.pipeline import create_pipeline

DEFAULT_OUTPUT = "pipeline.yaml"
# The cluster defaults that the committed pipeline.yaml is compiled with (`ich compile` with no options).
DEFAULT_PIPELINE_ROOT = "gs://ich-pipeline/root"
DEFAULT_INPUT_BASE = "gs://ich-pipeline/data"


def cluster_config(config: PipelineConfig, pipeline_root: str = DEFAULT_PIPELINE_ROOT,
                   input_base: str = DEFAULT_INPUT_BASE) -> PipelineConfig:
    """`config` for the cluster's roots. Its input is span folders unless `config` names a pattern: the input base
    cannot be listed at compile time (no credentials, no network) to detect its layout."""
    return dataclasses.replace(
        config, pipeline_root=pipeline_root, input_base=input_base,
        input_pattern=config.input_pattern or SPAN_PATTERN)


def compile_pipeline(config: PipelineConfig, image: str = CONTAINER_IMAGE, output: str = DEFAULT_OUTPUT) -> Path:
    """Writes the KFP v2 spec for `config` to `output` and returns its path."""
    if config.span_window != 1:
        raise ValueError(
            f"span_window={config.span_window}: a Kubeflow Pipelines v2 spec trains on its run's span only "
            "(its resolvers return one artifact, and TFX compiles no span-range resolver); set span_window=1")
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=str(out.parent), output_filename=out.name)
    runner.run(create_pipeline(config), write_out=True)
    return out
