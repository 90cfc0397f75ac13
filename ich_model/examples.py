"""The raw tf.Example of one CT slice: what the ExampleGen writes and what serving parses.

One builder serves both, so training and serving cannot drift. Pixels travel as the stored values (lossless,
little-endian int16 bytes) with the rescale tags; the Hounsfield conversion belongs to tf.Transform.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ich_model.constants import NUM_LABELS, SUBTYPES
from ich_model.dicom import PIXEL_DTYPE, CtSlice, SliceHeader

IMAGE_ID = "image_id"
PATIENT_ID = "patient_id"
STUDY_UID = "study_uid"
SERIES_UID = "series_uid"
PIXELS = "pixels"
HEIGHT = "height"
WIDTH = "width"
RESCALE_SLOPE = "rescale_slope"
RESCALE_INTERCEPT = "rescale_intercept"
LABEL = "label"
Z_POSITION = "z_position"
SLICE_POSITION = "slice_position_mm"  # along the slice normal: what orders and spaces a series' slices
SLICE_INDEX = "slice_index"
SLICE_COUNT = "slice_count"
RELATIVE_POSITION = "relative_position"
PIXEL_SPACING_MM = "pixel_spacing_mm"
INTERCEPT_GROUP = "intercept_group"
IMAGE_SIZE = "image_size"
SPAN = "span"
# What describes a span's population (a scanner, a protocol, a site), which the DataGate compares between spans;
# identifiers, pixels and positions within a study do not. Height and width are compared as the one categorical
# IMAGE_SIZE: the few sizes that whole studies share make a poor histogram.
POPULATION_CATEGORICAL = (INTERCEPT_GROUP, IMAGE_SIZE)
POPULATION_NUMERIC = (PIXEL_SPACING_MM, RESCALE_INTERCEPT, SLICE_COUNT)


# How the raw Examples parse, every feature a scalar (the SchemaGen schema may give them shape [1] instead).
RAW_FEATURE_SPEC: dict[str, tf.io.FixedLenFeature] = {
    **{name: tf.io.FixedLenFeature([], tf.string) for name in
       (IMAGE_ID, PATIENT_ID, STUDY_UID, SERIES_UID, PIXELS, INTERCEPT_GROUP, IMAGE_SIZE)},
    **{name: tf.io.FixedLenFeature([], tf.int64) for name in (HEIGHT, WIDTH, SLICE_INDEX, SLICE_COUNT, SPAN)},
    **{name: tf.io.FixedLenFeature([], tf.float32) for name in
       (RESCALE_SLOPE, RESCALE_INTERCEPT, Z_POSITION, SLICE_POSITION, RELATIVE_POSITION, PIXEL_SPACING_MM)},
    LABEL: tf.io.FixedLenFeature([NUM_LABELS], tf.int64),
}


TRAIN_SPLIT = "train"
# Training patients held out from the members, on whose slices the study-context stage learns (PipelineConfig's
# `context_share`; empty by default, when the context stage learns from the train split the members saw).
CONTEXT_SPLIT = "context"
# Beside the train split, the ExampleGen writes each subtype's positives of that split to a folder of their own, so
# that the balanced sampler's positive streams read only what they yield (filtering the whole split reads about
# 1/prevalence records per draw). TFX's components see only the folders the artifact's split_names list.
POSITIVES_FOLDER = "Positives-{split}"


def positives_uri(examples_uri: str, split: str, subtype: str) -> str:
    """The folder of `split`'s Examples that are positive for `subtype`."""
    if subtype not in SUBTYPES:
        raise ValueError(f"{subtype!r} is not a subtype; expected one of {SUBTYPES}")
    return os.path.join(examples_uri, POSITIVES_FOLDER.format(split=split), subtype)


def positives_pattern(split_pattern: str, subtype: str) -> str:
    """The file pattern of a subtype's positives, from the pattern of the split files that hold them as TFX's
    Trainer gives it (`<examples>/Split-<split>/*`)."""
    split_dir = os.path.dirname(split_pattern.rstrip("/"))
    folder = os.path.basename(split_dir)
    if not folder.startswith("Split-"):
        raise ValueError(f"{split_pattern!r} is not a split's file pattern (<examples>/Split-<split>/*)")
    return os.path.join(positives_uri(os.path.dirname(split_dir), folder[len("Split-"):], subtype), "*")


@dataclass(frozen=True)
class SlicePlacement:
    """Where a slice sits in its study, ordered by position along the slice normal (feet to head for an axial
    series)."""

    slice_index: int
    slice_count: int

    @property
    def relative_position(self) -> float:
        return self.slice_index / (self.slice_count - 1) if self.slice_count > 1 else 0.5


def place_slices(headers: Iterable[SliceHeader]) -> dict[str, SlicePlacement]:
    """Order a study's slices by position along the slice normal (slices without one go last, by image ID)."""
    ordered = sorted(headers, key=lambda h: (math.isnan(h.slice_position_mm),
                                             0.0 if math.isnan(h.slice_position_mm) else h.slice_position_mm,
                                             h.image_id))
    return {h.image_id: SlicePlacement(i, len(ordered)) for i, h in enumerate(ordered)}


def _bytes(value: str | bytes) -> tf.train.Feature:
    data = value.encode() if isinstance(value, str) else value
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))


def _ints(*values: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))


def _float(value: float) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))


def slice_to_example(ct: CtSlice, placement: SlicePlacement, label: np.ndarray | None = None,
                     span: int = 0) -> tf.train.Example:
    """The raw tf.Example of a slice; `label` (six 0/1 values, project order) is omitted for serving. IDs are as
    the file holds them: the ExampleGen pseudonymises them after splitting (ich_model.pseudonyms)."""
    features = {
        IMAGE_ID: _bytes(ct.image_id),
        PATIENT_ID: _bytes(ct.patient_id),
        STUDY_UID: _bytes(ct.study_uid),
        SERIES_UID: _bytes(ct.series_uid),
        PIXELS: _bytes(np.ascontiguousarray(ct.pixels, dtype=PIXEL_DTYPE).tobytes()),
        HEIGHT: _ints(ct.height),
        WIDTH: _ints(ct.width),
        RESCALE_SLOPE: _float(ct.rescale_slope),
        RESCALE_INTERCEPT: _float(ct.rescale_intercept),
        Z_POSITION: _float(ct.z_position),
        SLICE_POSITION: _float(ct.slice_position_mm),
        SLICE_INDEX: _ints(placement.slice_index),
        SLICE_COUNT: _ints(placement.slice_count),
        RELATIVE_POSITION: _float(placement.relative_position),
        PIXEL_SPACING_MM: _float(ct.pixel_spacing_mm),
        INTERCEPT_GROUP: _bytes(ct.intercept_group),
        IMAGE_SIZE: _bytes(ct.image_size),
        SPAN: _ints(span),
    }
    if label is not None:
        features[LABEL] = _ints(*label)
    return tf.train.Example(features=tf.train.Features(feature=features))


def example_pixels(example: tf.train.Example) -> np.ndarray:
    """The stored pixel values of an Example, as the int16 array they were written from."""
    feature = example.features.feature
    height, width = feature[HEIGHT].int64_list.value[0], feature[WIDTH].int64_list.value[0]
    return np.frombuffer(feature[PIXELS].bytes_list.value[0], dtype=PIXEL_DTYPE).reshape(height, width)
