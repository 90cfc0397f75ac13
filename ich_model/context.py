"""Study records: the input of the study-context stage, one tf.Example per series of a study.

A record holds the series' slices in order along the slice normal (ich_model.dicom.position_along_normal), and for
each slice what the slice ensemble said of it (its members' embeddings, the probabilities and their spread), its
position, the distances to its neighbours and its labels; per series, its length and the study label (a label is
positive when any slice is). Per-slice lists are flat and slice-major ([S, k] stored as S*k values), so that
StatisticsGen, the Trainer's input function and the Evaluator read plain tf.Examples: no SequenceExample (which
Transform reads at batch size 1 without a hand-written tensor representation) and no padding (which TFMA would
count as negatives). No pixels: the stage learns from embeddings.

Slices without a position go last, by image ID; slices at the same position (within DUPLICATE_TOLERANCE_MM) keep
both, by image ID. Both are counted on the record and in the component's report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ich_model.constants import NUM_LABELS
from ich_model.examples import PATIENT_ID, SERIES_UID, SPAN, STUDY_UID

LENGTH = "length"
IMAGE_IDS = "image_ids"
POSITIONS = "positions_mm"  # along the slice normal; NaN where unknown
POSITION_KNOWN = "position_known"  # 1 where the slice has a position
GAP_BEFORE = "gap_before_mm"  # to the previous slice along the normal; 0 for the first or where unknown
GAP_AFTER = "gap_after_mm"
EMBEDDING = "embedding"  # [S, members * D]: each member's pooled features, member-major
EMBEDDING_SIZE = "embedding_size"
PROBABILITIES = "probabilities"  # [S, 6]: the slice ensemble's mean
SPREAD = "spread"  # [S, 6]: its members' standard deviation
SLICE_LABELS = "slice_labels"  # [S, 6]
STUDY_LABEL = "study_label"  # [6]: the maximum over the slices
MISSING_POSITIONS = "missing_positions"
DUPLICATE_POSITIONS = "duplicate_positions"

# Two slices closer than this along the normal are at the same position (a repeated or duplicated acquisition).
DUPLICATE_TOLERANCE_MM = 0.01


@dataclass(frozen=True)
class ScoredSlice:
    """One slice as the study stage sees it."""

    image_id: str
    position_mm: float  # NaN when unknown
    embedding: np.ndarray  # [members * D]
    probabilities: np.ndarray  # [6]
    spread: np.ndarray  # [6]
    label: np.ndarray | None  # [6] 0/1, None for unlabelled slices


@dataclass(frozen=True)
class OrderedSeries:
    slices: list[ScoredSlice]
    missing_positions: int
    duplicate_positions: int  # slices at the position of the slice before them

    @property
    def positions(self) -> np.ndarray:
        return np.array([s.position_mm for s in self.slices], np.float64)

    def gaps(self) -> tuple[np.ndarray, np.ndarray]:
        """Distances along the normal to the previous and the next slice; 0 at the ends and next to a slice
        without a position."""
        steps = np.nan_to_num(np.diff(self.positions), nan=0.0)
        return np.concatenate([[0.0], steps]), np.concatenate([steps, [0.0]])


def order_series(slices: Iterable[ScoredSlice]) -> OrderedSeries:
    ordered = sorted(slices, key=lambda s: (math.isnan(s.position_mm),
                                            0.0 if math.isnan(s.position_mm) else s.position_mm, s.image_id))
    if not ordered:
        raise ValueError("a series needs at least one slice")
    known = np.array([s.position_mm for s in ordered if not math.isnan(s.position_mm)])
    return OrderedSeries(ordered, missing_positions=len(ordered) - len(known),
                         duplicate_positions=int(np.sum(np.diff(known) <= DUPLICATE_TOLERANCE_MM)))


def _bytes(*values: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode() for v in values]))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in np.ravel(values)]))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(values).astype(np.float32).tolist()))


def study_record(study_uid: str, series_uid: str, patient_id: str, span: int,
                 series: OrderedSeries) -> tf.train.Example:
    """The record of one ordered series; labels are written when every slice has them."""
    slices = series.slices
    embedding = np.stack([s.embedding for s in slices])
    gap_before, gap_after = series.gaps()
    features = {
        STUDY_UID: _bytes(study_uid),
        SERIES_UID: _bytes(series_uid),
        PATIENT_ID: _bytes(patient_id),
        SPAN: _ints([span]),
        LENGTH: _ints([len(slices)]),
        IMAGE_IDS: _bytes(*(s.image_id for s in slices)),
        POSITIONS: _floats(series.positions),
        POSITION_KNOWN: _ints(~np.isnan(series.positions)),
        GAP_BEFORE: _floats(gap_before),
        GAP_AFTER: _floats(gap_after),
        EMBEDDING: _floats(embedding),
        EMBEDDING_SIZE: _ints([embedding.shape[1]]),
        PROBABILITIES: _floats(np.stack([s.probabilities for s in slices])),
        SPREAD: _floats(np.stack([s.spread for s in slices])),
        MISSING_POSITIONS: _ints([series.missing_positions]),
        DUPLICATE_POSITIONS: _ints([series.duplicate_positions]),
    }
    labelled = [s.label is not None for s in slices]
    if all(labelled):
        labels = np.stack([s.label for s in slices]).astype(np.int64)
        if labels.shape[1] != NUM_LABELS:
            raise ValueError(f"a slice label holds {labels.shape[1]} values, expected {NUM_LABELS}")
        features[SLICE_LABELS] = _ints(labels)
        features[STUDY_LABEL] = _ints(labels.max(axis=0))
    elif any(labelled):
        unlabelled = [s.image_id for s in slices if s.label is None]
        raise ValueError(f"a series mixes labelled and unlabelled slices (unlabelled: {', '.join(unlabelled[:5])})")
    return tf.train.Example(features=tf.train.Features(feature=features))
