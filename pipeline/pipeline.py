"""`create_pipeline(config)`: the whole DAG, for LocalDagRunner and for the Kubeflow Pipelines v2 compiler.

DicomExampleGen (one span) -> StatisticsGen -> ExampleValidator (against the committed schema, ImportSchemaGen)
-> DataGate (a span with anomalies stops here; its drift from the training window is measured)
-> Transform (over the span window, with the last analyzer cache) -> trainer_a/b/c (warm-started from the latest
blessed model) -> Ensemble -> StudySequenceGen -> context_trainer (the study model: the ensemble and the
study-context model) -> StudyEvaluator (on this span's eval split, against
the latest blessed model; it blesses) -> Pusher; beside them the Evaluator reports the ensemble and its members.
Components take dotted function paths (no module files), so the compiled spec needs only this package installed in
the image.
"""

from __future__ import annotations

from tfx import v1 as tfx

from components.atomic_pusher import AtomicPusher
from components.data_gate import DataGate
from components.dicom_example_gen import DicomExampleGen
from components.study_evaluator import StudyEvaluator
from ich_model.examples import CONTEXT_SPLIT, TRAIN_SPLIT
from pipeline.configs import PipelineConfig, beam_args_with_workers_image
from pipeline.data_checks import SCHEMA_FILE, statistics_options
from pipeline.evaluation import EVAL_SPLIT, eval_config, study_eval_config
from pipeline.retraining import (
    WINDOW,
    FinishedRunLatestBlessedModelStrategy,
    span_profile_resolver,
    span_window_resolver,
    transform_cache_resolver,
)
from pipeline.summary import DATA_GATE
from pipeline.training import ensemble_of, member_trainers, study_stage

PREPROCESSING_FN = "ich_model.preprocessing.preprocessing_fn"
BASELINE_RESOLVER = "latest_blessed_model_resolver"


def latest_blessed_model_resolver(pipeline_name: str | None):
    """The model that a finished run of `pipeline_name` last blessed (none on a first run, when the change
    thresholds are skipped): a study model, or a slice ensemble that an earlier release published. Of any run when
    `pipeline_name` is None (Kubeflow; pipeline/retraining.py)."""
    strategy = ({"strategy_class": tfx.dsl.experimental.LatestBlessedModelStrategy} if pipeline_name is None else
                {"strategy_class": FinishedRunLatestBlessedModelStrategy, "config": {"pipeline_name": pipeline_name}})
    return tfx.dsl.Resolver(
        **strategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(BASELINE_RESOLVER)


def create_components(config: PipelineConfig, local: bool = False) -> list:
    """The DAG's nodes; `local` for LocalDagRunner, whose resolvers can read the metadata store's runs."""
    # One span per run: the one the config names, else the latest (TFX's default for `{SPAN}` patterns).
    this_span = tfx.proto.RangeConfig(static_range=tfx.proto.StaticRange(
        start_span_number=config.span, end_span_number=config.span)) if config.span else None
    example_gen = DicomExampleGen(
        config.input_base, input_pattern=config.input_pattern or None, train_share=config.train_share,
        context_share=config.context_share, max_reject_share=config.max_reject_share,
        id_salt_file=config.id_salt_path, range_config=this_span)
    resolvers = []
    if config.span_window == 1:
        training_examples = example_gen.outputs["examples"]
    else:
        window = span_window_resolver(example_gen, DATA_GATE, config.span_window, end_span=config.span)
        training_examples = window.outputs[WINDOW]
        resolvers.append(window)
    # The committed schema: it, not the statistics, says what a span must hold. Given it, StatisticsGen keeps no
    # identifier values (pipeline/data_checks.py).
    schema_gen = tfx.components.ImportSchemaGen(schema_file=config.schema_file or SCHEMA_FILE)
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
        stats_options=statistics_options(config.statistics_sample_rate))
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    drift_baseline = span_profile_resolver(DATA_GATE)
    data_gate = DataGate(
        anomalies=example_validator.outputs["anomalies"], schema=schema_gen.outputs["schema"],
        examples=example_gen.outputs["examples"], baseline_profile=drift_baseline.outputs["profile"],
        categorical_drift_limit=config.drift_categorical_limit, numeric_drift_limit=config.drift_numeric_limit,
        prevalence_drift_limit=config.drift_prevalence_limit, drift_blocks_training=config.drift_blocks_training,
        span_window=config.span_window).with_id(DATA_GATE)
    # materialize=False: the images are computed in the input pipelines (see ich_model/preprocessing.py); no
    # statistics either, since those of the transformed data would be over every image pixel.
    history_of = config.pipeline_name if local else None  # resolvers that take only finished runs' outputs
    cache = transform_cache_resolver(history_of)
    transform = tfx.components.Transform(
        examples=training_examples, schema=schema_gen.outputs["schema"], analyzer_cache=cache.outputs["cache"],
        preprocessing_fn=PREPROCESSING_FN, materialize=False, disable_statistics=True)
    transform.add_upstream_node(data_gate)  # nothing trains on a span that the gate refused
    baseline = latest_blessed_model_resolver(history_of)
    trainers = member_trainers(training_examples, transform.outputs["transform_graph"], config.trainer_settings,
                               base_model=baseline.outputs["model"])
    # The OOD model is fitted on this span's train split and calibrated on its eval split, the slices the
    # Evaluator scores (one Examples artifact, whatever the training window).
    ensemble = ensemble_of(trainers, transform.outputs["transform_graph"], example_gen.outputs["examples"])
    # The ensemble's report: its members and its OOD flag, per slice (no gates: it publishes nothing).
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"], model=ensemble.outputs["model"],
        schema=schema_gen.outputs["schema"], example_splits=[EVAL_SPLIT], eval_config=eval_config(config))
    sequences, context_trainer = study_stage(example_gen.outputs["examples"], ensemble.outputs["model"],
                                             config.context,
                                             train_split=CONTEXT_SPLIT if config.context_share else TRAIN_SPLIT)
    study_evaluator = StudyEvaluator(
        examples=example_gen.outputs["examples"], model=context_trainer.outputs["model"],
        baseline_model=baseline.outputs["model"], eval_config=study_eval_config(config), example_split=EVAL_SPLIT)
    # The Pusher reads the blessing itself and publishes nothing for an unblessed model; a version appears in the
    # serving folder complete, by a rename (components/atomic_pusher).
    pusher = AtomicPusher(
        model=context_trainer.outputs["model"], model_blessing=study_evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=config.serving_path)))
    return [example_gen, *resolvers, statistics_gen, schema_gen, example_validator, drift_baseline, data_gate, cache,
            transform, baseline, *trainers, ensemble, evaluator, sequences, context_trainer, study_evaluator, pusher]


def create_pipeline(config: PipelineConfig, metadata_connection_config=None) -> tfx.dsl.Pipeline:
    """The pipeline for `config`. Locally the metadata store is SQLite under the pipeline root; the Kubeflow
    compiler passes None and the cluster's metadata store is used."""
    return tfx.dsl.Pipeline(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        components=create_components(config, local=metadata_connection_config is not None),
        enable_cache=config.enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_args_with_workers_image(config.beam_pipeline_args),
    )
