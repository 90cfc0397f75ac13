"""The Ensemble component's work: the three members' SavedModels -> one SavedModel (one Model artifact), with an
out-of-distribution model (ich_model/ood.py) fitted on the members' embeddings of the train split and
calibrated on the eval split."""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf
from tfx.utils import path_utils

from ich_model.constants import ANY, LABELS, NUM_LABELS
from ich_model.description import ensemble_description, read_description
from ich_model.examples import LABEL
from ich_model.ood import OodModel
from ich_model.serving import EMBEDDING, ScoringModule, load_members

FIT_SPLIT, CALIBRATION_SPLIT = "train", "eval"
# Slices per call of the members: the batch the Evaluator and `ich predict` score with.
EMBEDDING_BATCH = 32
# A progress line every so many batches (320 slices: a few lines for the demo's splits).
PROGRESS_EVERY_BATCHES = 10


def split_embeddings(scorer: ScoringModule, split_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The members' embeddings [N, M, D] of the raw Examples (gzipped TFRecords) in `split_dir`, computed by
    `scorer`'s own serving path (parse -> transform -> members), and their `any` labels [N]."""
    files = tf.io.gfile.glob(os.path.join(split_dir, "*.gz"))
    if not files:
        raise ValueError(f"the {split} split ({split_dir}) holds no Examples to fit the OOD model on")
    label_spec = {LABEL: tf.io.FixedLenFeature([NUM_LABELS], tf.int64)}
    embeddings, labels = [], []
    for batch in tf.data.TFRecordDataset(files, compression_type="GZIP").batch(EMBEDDING_BATCH):
        embeddings.append(scorer.serve(batch)[EMBEDDING].numpy())
        labels.append(tf.io.parse_example(batch, label_spec)[LABEL].numpy()[:, LABELS.index(ANY)])
        if len(labels) % PROGRESS_EVERY_BATCHES == 0:
            logging.info("Ensemble: embedded %d %s slices", sum(map(len, labels)), split)
    logging.info("Ensemble: embedded %d %s slices in all", sum(map(len, labels)), split)
    return np.concatenate(embeddings), np.concatenate(labels)


def fit_ood(scorer: ScoringModule, examples_uri: str) -> OodModel:
    """The OOD model of the members `scorer` runs: fitted on the train split, its threshold on the eval split."""
    fit_embeddings, any_labels = split_embeddings(scorer, os.path.join(examples_uri, f"Split-{FIT_SPLIT}"),
                                                  FIT_SPLIT)
    held_out, _ = split_embeddings(scorer, os.path.join(examples_uri, f"Split-{CALIBRATION_SPLIT}"),
                                   CALIBRATION_SPLIT)
    ood = OodModel.fit(fit_embeddings, any_labels).calibrated(held_out)
    logging.info("Ensemble: OOD model fitted on %d train slices (per any class %s), threshold %.3f flags %.1f%% of "
                 "%d eval slices", sum(ood.class_counts), dict(zip(ood.classes, ood.class_counts, strict=True)),
                 ood.threshold, 100 * ood.held_out_flagged_share, ood.held_out_slices)
    return ood


def merge_members(member_uris: dict[str, str], transform_graph_uri: str, examples_uri: str, output_uri: str) -> str:
    """Load each member's serving SavedModel (`member_uris`: member name -> Model artifact URI), fit the OOD model
    on their embeddings of the Examples at `examples_uri`, and export one ScoringModule over all of them with it,
    described by the members' own descriptions, in TFX's serving layout (`<uri>/Format-Serving`) so that the
    Evaluator and the Pusher find it. Returns the export path."""
    member_dirs = {name: path_utils.serving_model_path(uri) for name, uri in member_uris.items()}
    member_descriptions = {name: read_description(path) for name, path in member_dirs.items()}
    members = load_members(list(member_dirs.values()))
    names = list(member_dirs)
    scorer = ScoringModule(members, names, transform_graph_uri, ensemble_description(member_descriptions))
    ood = fit_ood(scorer, examples_uri)
    description = ensemble_description(member_descriptions, ood.description())
    export_dir = path_utils.serving_model_path(output_uri)
    ScoringModule(members, names, transform_graph_uri, description, ood).save(export_dir)
    return export_dir
