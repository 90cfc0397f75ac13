"""Every setting of the pipeline in one place: the `PipelineConfig` fields and three named presets.

`demo` fits this project's reference machine (2 CPU cores, no GPU): the tiny cascade on the bundled synthetic
set. `workstation` is one GPU with the B0 front end; `cluster` is the S front end on a multi-GPU node with a
distributed Beam runner. Every field can be overridden from the command line (`ich run --set NAME=VALUE`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from ich_model.constants import BATCH_SIZE, LABELS
from ich_model.pseudonyms import SALT_FILE
from ich_model.settings import ContextSettings, TrainerSettings

PIPELINE_NAME = "ich"
# The container image (built from the repository's Dockerfile) that holds this package and its dependencies.
CONTAINER_IMAGE = "ghcr.io/ich-pipeline/ich:latest"
# Beam arguments that say where Beam workers get their Python dependencies from.
_DEPENDENCY_ARGS = ("--extra_package", "--extra_packages", "--setup_file", "--requirements_file",
                    "--sdk_container_image", "--worker_harness_container_image")


@dataclass(frozen=True)
class SynthSettings:
    """The synthetic set that `ich run` writes when it is given no data (the `ich synth` options). Many patients
    with a balanced subtype mix, so that the eval split (a fifth of the patients) holds every subtype."""

    patients: int = 150
    slices_per_study: int = 12
    seed: int = 0
    positive_fraction: float = 0.5
    subtype_mix: str = "balanced"


def beam_args_with_workers_image(beam_args, image: str = CONTAINER_IMAGE) -> list[str]:
    """`beam_args`, naming `image` as the Beam workers' environment unless they already say where the workers'
    dependencies come from. Otherwise TFX packages a copy of its own installation for remote workers, for every
    Beam component it runs, into a temporary folder that is never removed, and a direct run (in this environment)
    never uses it. A remote runner's workers get the image that holds this package. Empty arguments stay empty:
    TFX then packages nothing."""
    args = list(beam_args)
    if args and not any(arg.split("=")[0] in _DEPENDENCY_ARGS for arg in args):
        args.append(f"--sdk_container_image={image}")
    return args


def metadata_path(pipeline_root: str) -> str:
    """The local SQLite metadata store of a pipeline root."""
    return os.path.join(pipeline_root, "metadata.sqlite")


@dataclass(frozen=True)
class PipelineConfig:
    preset: str
    # Where things live. `pipeline_root` holds artifacts and (locally) the SQLite metadata store.
    input_base: str = "data/demo"
    input_pattern: str = ""  # default: detected from the input base (span folders, the RSNA layout, or all)
    pipeline_root: str = "build/pipeline"
    serving_dir: str = ""  # default: <pipeline_root>/serving
    pipeline_name: str = PIPELINE_NAME
    enable_cache: bool = True
    beam_pipeline_args: tuple[str, ...] = ("--direct_running_mode=multi_processing", "--direct_num_workers=0")
    # Ingestion: the span folder to ingest (`span-{SPAN}/`; 0: the latest one) and how many spans, up to that one,
    # the Transform and the Trainers read (0: every span so far; 1: this span only). The Evaluator reads this span.
    span: int = 0
    span_window: int = 0
    train_share: float = 0.8
    # Share of all patients taken from the train split into a `context` split that the members never see, for the
    # study-context stage to learn from (its out-of-fold option); 0: it learns from the members' own train split.
    # Why the default: docs/study-context.md#which-embeddings-the-context-stage-learns-from.
    context_share: float = 0.0
    max_reject_share: float = 0.05
    # Patient, study and series IDs are stored as salted pseudonyms (ich_model.pseudonyms). The salt lives in a
    # file (default <pipeline_root>/id_salt, made on the first run); `id_salt_file` names another one to share
    # pseudonyms across roots, `id_salt` sets the salt of a root's new file. Neither salt reaches last_run.json.
    id_salt: str = ""
    id_salt_file: str = ""
    # Share of Examples that StatisticsGen reads (at random): all of the demo's; the GPU presets read a sample of
    # their large spans. The committed schema says what a span must hold, whatever the sample.
    statistics_sample_rate: float = 1.0
    # The schema every span is checked against (default: pipeline/schema.pbtxt; pipeline/data_checks.py).
    schema_file: str = ""
    # Drift of a span from the training window (the last `span_window` spans that passed the DataGate;
    # components/data_gate): reported above these limits, and the span refused when `drift_blocks_training`.
    # L-infinity distance of the value shares of the intercept groups and image sizes; approximate Jensen-Shannon
    # divergence (0..1) of the histograms of pixel spacing, rescale intercept and slice count; absolute change of
    # each label's prevalence. Why these values: docs/retraining.md#drift-between-spans.
    drift_categorical_limit: float = 0.25
    drift_numeric_limit: float = 0.2
    drift_prevalence_limit: float = 0.1
    drift_blocks_training: bool = False
    # Training (per member; ich_model/settings.py says what each setting does). Where the demo keeps a Trainer
    # default, it is read from TrainerSettings; warm-start steps and the evaluation interval are the demo's own.
    model_preset: str = TrainerSettings.preset
    train_steps: int = TrainerSettings.train_steps
    warm_start_steps: int = 100
    eval_steps: int = TrainerSettings.eval_steps
    batch_size: int = TrainerSettings.batch_size
    eval_every_steps: int = 50
    cache_examples: bool = TrainerSettings.cache_examples
    precision: str = TrainerSettings.precision  # the GPU presets train in mixed precision
    # Evaluation and blessing (the study model's `refined` output on the eval split's slices; its study head).
    operating_threshold: float = 0.5
    # The demo's floors catch a model that learned nothing (0.5); see docs/decisions.md, "The demo's floors".
    auc_floors: dict[str, float] = field(default_factory=lambda: {name: 0.6 for name in LABELS})
    max_weighted_log_loss: float = 0.35
    auc_regression_tolerance: float = 0.01  # a candidate may lose at most this much AUC against the baseline
    log_loss_regression_tolerance: float = 0.005
    study_auc_floor: float = 0.6  # the study head's AUC of `any` (study label: any slice positive)
    context: ContextSettings = ContextSettings()
    synth: SynthSettings = SynthSettings()
    # Kubeflow only (`ich compile`, pipeline/resources.py): the accelerator each trainer requests, and its kind;
    # 0 trains on CPU. The Ensemble and the Evaluator, which run the members, get one when the trainers do.
    trainer_accelerators: int = 0
    accelerator_type: str = "nvidia.com/gpu"

    @property
    def trainer_settings(self) -> TrainerSettings:
        """What each member Trainer is told (its `member` is set per Trainer)."""
        return TrainerSettings(preset=self.model_preset, train_steps=self.train_steps, eval_steps=self.eval_steps,
                               batch_size=self.batch_size, eval_every_steps=self.eval_every_steps,
                               cache_examples=self.cache_examples, warm_start_steps=self.warm_start_steps,
                               precision=self.precision)

    @property
    def serving_path(self) -> str:
        return self.serving_dir or os.path.join(self.pipeline_root, "serving")

    @property
    def id_salt_path(self) -> str:
        return self.id_salt_file or os.path.join(self.pipeline_root, SALT_FILE)

    @property
    def metadata_path(self) -> str:
        return metadata_path(self.pipeline_root)


# The GPU presets' batch per accelerator. The seed's 32 leaves a current GPU mostly idle (on an H200,
# EfficientNetV2-B0 trains at 632 images/s at batch 32 and 2,962 at 128); each preset's steps shrink by the same
# factor, so that it sees as many images as its plan at batch 32, and the rate grows by the square-root rule
# (ich_model.members.peak_learning_rate).
GPU_BATCH_PER_ACCELERATOR = 128


def _steps_at(batch_size: int, steps_at_seed_batch: int) -> int:
    """The steps that show as many images at `batch_size` as `steps_at_seed_batch` do at the seed's batch."""
    return max(1, round(steps_at_seed_batch * BATCH_SIZE / batch_size))


_WORKSTATION_BATCH, _CLUSTER_BATCH = GPU_BATCH_PER_ACCELERATOR, 4 * GPU_BATCH_PER_ACCELERATOR

PRESETS = {
    "demo": PipelineConfig(preset="demo"),
    "workstation": PipelineConfig(
        preset="workstation", model_preset="b0", batch_size=_WORKSTATION_BATCH,
        train_steps=_steps_at(_WORKSTATION_BATCH, 20_000), warm_start_steps=_steps_at(_WORKSTATION_BATCH, 5_000),
        eval_steps=_steps_at(_WORKSTATION_BATCH, 200), eval_every_steps=_steps_at(_WORKSTATION_BATCH, 2_000),
        cache_examples=False, statistics_sample_rate=0.05, trainer_accelerators=1, precision="mixed",
        auc_floors={name: 0.9 for name in LABELS}, max_weighted_log_loss=0.09, auc_regression_tolerance=0.002,
        log_loss_regression_tolerance=0.001, study_auc_floor=0.95),
    "cluster": PipelineConfig(
        preset="cluster", model_preset="s", batch_size=_CLUSTER_BATCH,
        train_steps=_steps_at(_CLUSTER_BATCH, 60_000), warm_start_steps=_steps_at(_CLUSTER_BATCH, 15_000),
        eval_steps=_steps_at(_CLUSTER_BATCH, 500), eval_every_steps=_steps_at(_CLUSTER_BATCH, 5_000),
        cache_examples=False, statistics_sample_rate=0.05, beam_pipeline_args=(),
        span_window=1,  # Kubeflow Pipelines v2 cannot resolve a window of spans (see pipeline/retraining.py)
        trainer_accelerators=4, precision="mixed",
        auc_floors={name: 0.95 for name in LABELS},
        max_weighted_log_loss=0.07, auc_regression_tolerance=0.002, log_loss_regression_tolerance=0.001,
        study_auc_floor=0.97),
}


def _parse_value(current, text: str, name: str):
    """`text` as the type of the field's current value (JSON for dicts and lists)."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(current, (int, float, str)):
            return type(current)(text)
        if isinstance(current, tuple):
            value = json.loads(text) if text.startswith("[") else text.split()
            return tuple(str(v) for v in value)
        if isinstance(current, dict):
            return {**current, **json.loads(text)}
    except (ValueError, json.JSONDecodeError) as error:
        raise ValueError(f"--set {name}={text}: not a valid {type(current).__name__} ({error})") from None
    raise ValueError(f"--set {name}: this field cannot be set from the command line")


NESTED = ("synth", "context")  # settings groups reached as `synth.patients`, `context.train_steps`


def with_overrides(config: PipelineConfig, overrides: dict[str, str]) -> PipelineConfig:
    """A copy of `config` with `name -> text` overrides parsed to each field's type; `synth.patients` style
    names reach the nested settings groups (NESTED). Unknown names are an error that lists the known ones."""
    fields = {f.name for f in dataclasses.fields(config)} - {"preset", *NESTED}
    nested_fields = {group: {f.name for f in dataclasses.fields(getattr(config, group))} for group in NESTED}
    changes: dict = {}
    nested_changes: dict[str, dict] = {group: {} for group in NESTED}
    for name, text in overrides.items():
        group, _, key = name.partition(".")
        if key and group in NESTED:
            if key not in nested_fields[group]:
                raise ValueError(f"--set {name}: unknown; {group} settings are "
                                 f"{', '.join(sorted(nested_fields[group]))}")
            nested_changes[group][key] = _parse_value(getattr(getattr(config, group), key), text, name)
        elif name in fields:
            changes[name] = _parse_value(getattr(config, name), text, name)
        else:
            known = sorted(fields) + [f"{g}.{n}" for g in NESTED for n in sorted(nested_fields[g])]
            raise ValueError(f"--set {name}: unknown setting; known settings are {', '.join(known)}")
    for group, group_changes in nested_changes.items():
        if group_changes:
            changes[group] = dataclasses.replace(getattr(config, group), **group_changes)
    unknown_floors = set(changes.get("auc_floors", {})) - set(config.auc_floors)
    if unknown_floors:
        raise ValueError(f"--set auc_floors: unknown labels {sorted(unknown_floors)}")
    return dataclasses.replace(config, **changes)


def preset(name: str) -> PipelineConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets are {', '.join(PRESETS)}")
    return PRESETS[name]
