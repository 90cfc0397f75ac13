"""The study-context Trainer's `run_fn`: fits the context model (ich_model/context_model.py) on the train split's
study records (StudySequenceGen's output), scores it on the eval split's against the slice ensemble alone, chooses
its operating points there (ich_model/operating_points.py) and exports the study model
(ich_model/study_serving.py) over the base model, which is the slice ensemble that scored the records.

No Transform: the records hold embeddings and probabilities, not pixels, and need no analyzers; `run_fn` parses
them itself (tf.Example, variable-length lists).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict

import numpy as np
import tensorflow as tf

from ich_model import context
from ich_model.constants import LABELS
from ich_model.context_model import (
    StudyPredictions,
    build_context_model,
    fit_context_model,
    predict_studies,
    study_batches,
)
from ich_model.description import read_description, study_description
from ich_model.examples import STUDY_UID
from ich_model.operating_points import LEVELS, SLICE_LEVEL, STUDY_LEVEL, OperatingPoints
from ich_model.settings import ContextSettings
from ich_model.study_serving import StudyScoringModule, study_outputs


def embedding_size(files: list[str]) -> int:
    """The embedding width of the records (every record of a run has the ensemble's)."""
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(1):
        example = tf.train.Example.FromString(record.numpy())
        return int(example.features.feature[context.EMBEDDING_SIZE].int64_list.value[0])
    raise ValueError(f"no study records in {files}")


def record_studies(files: list[str]) -> list[str]:
    """The study UID of each record, in the order study_batches reads them (sorted files, no shuffling)."""
    return [tf.train.Example.FromString(record.numpy()).features.feature[STUDY_UID].bytes_list.value[0].decode()
            for record in tf.data.TFRecordDataset(sorted(files), compression_type="GZIP")]


def operating_points(predictions: StudyPredictions, studies: list[str], targets: dict[str, float]) -> OperatingPoints:
    """Operating points for `targets` on the refined slices and on the studies (a study's head: the maximum over
    its series' heads, as the study model serves it; its label: any series positive)."""
    by_study = defaultdict(list)
    for index, study in enumerate(studies):
        by_study[study].append(index)
    rows = list(by_study.values())
    return OperatingPoints.fit(
        targets,
        scores={SLICE_LEVEL: np.concatenate(predictions.refined),
                STUDY_LEVEL: np.stack([predictions.study[r].max(axis=0) for r in rows])},
        labels={SLICE_LEVEL: np.concatenate(predictions.slice_labels),
                STUDY_LEVEL: np.stack([predictions.study_labels[r].max(axis=0) for r in rows])})


def _log_operating_points(points: OperatingPoints) -> None:
    for level in LEVELS:
        logging.info("operating points per %s (target sensitivity %.2f on the eval split): %s", level,
                     points.targets[level], ", ".join(
                         f"{name} {'none (no positive)' if p.threshold is None else f'{p.threshold:.4f}'}"
                         for name, p in zip(LABELS, points.points[level].values(), strict=True)))


def run_fn(fn_args) -> None:
    settings = ContextSettings.from_custom_config(fn_args.custom_config)
    if fn_args.train_steps != settings.train_steps:
        raise ValueError(f"the context Trainer's settings say train_steps {settings.train_steps}, its TrainArgs "
                         f"{fn_args.train_steps}")
    if not fn_args.base_model:
        raise ValueError("the context Trainer needs the slice ensemble that scored its records as base_model")
    train_files = [f for pattern in fn_args.train_files for f in tf.io.gfile.glob(pattern)]
    eval_files = [f for pattern in fn_args.eval_files for f in tf.io.gfile.glob(pattern)]
    # Which patients' embeddings it learns from: the members' own train split, or the context split they never saw
    # (TFX's split folder, `Split-<name>`; PipelineConfig.context_share).
    trained_on = {"splits": sorted({os.path.basename(os.path.dirname(f)).removeprefix("Split-") for f in train_files}),
                  "series": len(record_studies(train_files))}
    model = build_context_model(embedding_size(train_files), units=settings.units, seed=settings.seed)
    logging.info("context model: %d parameters, %d steps of %d series, from %d series of split %s",
                 model.count_params(), settings.train_steps, settings.batch_size, trained_on["series"],
                 ", ".join(trained_on["splits"]))
    fit_context_model(model, study_batches(train_files, settings.batch_size, training=True, seed=settings.seed),
                      settings.train_steps, settings.learning_rate, log=logging.info)
    predictions = predict_studies(model, study_batches(eval_files, settings.batch_size, training=False))
    figures = {name: round(value, 6) for name, value in predictions.figures().items()}
    figures.update(series=len(predictions.refined), slices=sum(len(r) for r in predictions.refined))
    logging.info("context model on the eval split: weighted log loss per slice %.4f (slice ensemble %.4f), per "
                 "series %.4f (max over slices %.4f), %d series", figures["slice_refined"], figures["slice_only"],
                 figures["study_head"], figures["study_max_rule"], figures["series"])
    points = operating_points(predictions, record_studies(eval_files), settings.sensitivity_targets)
    _log_operating_points(points)
    ensemble = tf.saved_model.load(fn_args.base_model)
    slice_ensemble = read_description(fn_args.base_model)
    description = study_description(slice_ensemble, {
        "settings": settings.as_custom_config(), "steps_run": settings.train_steps, "trained_on": trained_on,
        "eval": figures},
        study_outputs(slice_ensemble), operating_points=points.description())
    StudyScoringModule(ensemble, model, description).save(fn_args.serving_model_dir)
