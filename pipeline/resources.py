"""What each Kubeflow task requests: CPU, memory and, for the tasks that run the members, accelerators.

LocalDagRunner ignores these; `ich compile` writes them into `pipeline.yaml` (pipeline/kubeflow_runner.py).
Requests equal limits, so that a task gets what it asked for and is not throttled or evicted by its neighbours.
The Beam components run Beam's direct runner inside their container unless the preset names a distributed
runner (then their container only launches the job and needs far less).
"""

from __future__ import annotations

from dataclasses import dataclass

from kfp.pipeline_spec import pipeline_spec_pb2

from ich_model.members import MEMBERS
from pipeline.configs import PipelineConfig
from pipeline.training import CONTEXT_TRAINER, trainer_id

ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
# A trainer's input pipeline (inflate, parse, transform, augment) needs about 12 cores to feed one GPU at the
# ~1,000-2,000 training images/s a current GPU consumes (docs/kubeflow.md).
CPUS_PER_TRAINER_ACCELERATOR = 12
MEMORY_GB_PER_TRAINER_ACCELERATOR = 32


@dataclass(frozen=True)
class TaskResources:
    cpus: float
    memory_gb: float
    accelerators: int = 0

    def spec(self, accelerator_type: str) -> ResourceSpec:
        resources = ResourceSpec(
            cpu_limit=self.cpus, cpu_request=self.cpus, memory_limit=self.memory_gb, memory_request=self.memory_gb)
        if self.accelerators:
            resources.accelerator.type = accelerator_type
            resources.accelerator.count = self.accelerators
        return resources


def task_resources(config: PipelineConfig) -> dict[str, TaskResources]:
    """Component id -> what its task requests. Resolvers run no container and are not listed."""
    accelerators = config.trainer_accelerators
    if accelerators and config.batch_size % accelerators:
        raise ValueError(f"batch_size {config.batch_size} does not divide among {accelerators} accelerators per "
                         f"trainer: each takes an equal share of the global batch; set a multiple of {accelerators}")
    trainer = (TaskResources(CPUS_PER_TRAINER_ACCELERATOR * accelerators,
                             MEMORY_GB_PER_TRAINER_ACCELERATOR * accelerators, accelerators)
               if accelerators else TaskResources(8, 32))
    scoring_accelerators = 1 if accelerators else 0
    return {
        # Reads DICOM and writes gzipped Examples: CPU-bound, and the direct runner holds a bundle per core.
        "DicomExampleGen": TaskResources(8, 16),
        "StatisticsGen": TaskResources(8, 16),
        "ImportSchemaGen": TaskResources(1, 2),
        "ExampleValidator": TaskResources(1, 4),
        "DataGate": TaskResources(1, 2),
        # Builds the transform graph; its analyzers are cached across spans.
        "Transform": TaskResources(4, 16),
        **{trainer_id(name): trainer for name in MEMBERS},
        # These run the three members over a split: the Ensemble embeds the train and eval splits for its OOD
        # model, and holds the embeddings in memory; the Evaluator scores the eval split with TFMA;
        # StudySequenceGen embeds both splits; the StudyEvaluator runs the study model on each eval study.
        "Ensemble": TaskResources(8, 32, scoring_accelerators),
        "Evaluator": TaskResources(8, 32, scoring_accelerators),
        "StudySequenceGen": TaskResources(8, 32, scoring_accelerators),
        "StudyEvaluator": TaskResources(8, 32, scoring_accelerators),
        # A small sequence model over embeddings: no pixels, no accelerator.
        CONTEXT_TRAINER: TaskResources(4, 16),
        "Pusher": TaskResources(1, 2),
    }
