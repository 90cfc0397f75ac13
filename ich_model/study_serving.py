"""The published study model: the slice ensemble and the study-context model in one SavedModel.

Signature `serving_default(examples)`: the serialized raw slice Examples of one study, in any order (the study's
series may be several). Per slice, in the order given: `refined_probabilities` [N, 6] (the context model's),
`probabilities` and `spread` [N, 6] and the slice ensemble's other outputs but its embedding (members, OOD score
and flag), `series_index` [N] (the slice's series, numbered in the order of their UIDs) and `slice_order` [N] (its
place in its series along the slice normal); per study, `study_probabilities` [6]: per label the maximum over the
study's series of the context model's study head (a study bleeds when any of its series shows it). Signature
`transform_features` is the ensemble's (the images the members see, for Grad-CAM), and `ood_threshold` its OOD
threshold, so that a reader of slice ensembles reads a study model alike.

Order within a series: by `slice_position_mm` (ich_model.examples); slices without a position go last; slices at
the same position by image ID: the order of ich_model.context's records, so that nothing depends on the order the
slices came in. A study of one slice is a series of one.
"""

from __future__ import annotations

import math

import tensorflow as tf

from ich_model import context
from ich_model.constants import NUM_LABELS
from ich_model.context_model import GAPS, MASK, MM_PER_CM, REFINED, STUDY
from ich_model.description import write_description
from ich_model.examples import IMAGE_ID, SERIES_UID, SLICE_POSITION
from ich_model.serving import (
    EMBEDDING,
    EXAMPLES_SPEC,
    PROBABILITIES,
    SERVING_SIGNATURE,
    SPREAD,
    TRANSFORM_SIGNATURE,
)

REFINED_PROBABILITIES = "refined_probabilities"
STUDY_PROBABILITIES = "study_probabilities"
SERIES_INDEX = "series_index"
SLICE_ORDER = "slice_order"
OUTPUT_SHAPES = {REFINED_PROBABILITIES: ["N", NUM_LABELS], PROBABILITIES: ["N", NUM_LABELS],
                 SPREAD: ["N", NUM_LABELS], SERIES_INDEX: ["N"], SLICE_ORDER: ["N"],
                 STUDY_PROBABILITIES: [NUM_LABELS]}


def study_outputs(ensemble_description: dict) -> dict[str, list]:
    """The study signature's outputs (name -> shape): the ensemble's but its embedding, per slice, and the study
    stage's."""
    passed_on = {name: ["N", *shape[1:]] for name, shape in ensemble_description["outputs"].items()
                 if name != EMBEDDING}
    return {**passed_on, **OUTPUT_SHAPES}

_SERIES_SPEC = {IMAGE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
                SLICE_POSITION: tf.io.FixedLenFeature([], tf.float32, default_value=math.nan),
                SERIES_UID: tf.io.FixedLenFeature([], tf.string, default_value="")}


def lexicographic_order(strings: tf.Tensor) -> tf.Tensor:
    """The permutation that sorts `strings` [N] by their code points (a prefix first): stable sorts from the last
    character to the first, as a radix sort does (TensorFlow sorts numbers, not strings)."""
    codes = tf.strings.unicode_decode(strings, "UTF-8").to_tensor(default_value=-1)

    def by_column(column, order):
        keys = tf.gather(codes[:, column], order)
        return column - 1, tf.gather(order, tf.argsort(keys, stable=True))

    _, order = tf.while_loop(lambda column, _: column >= 0, by_column,
                             (tf.shape(codes)[1] - 1, tf.range(tf.shape(strings)[0])))
    return order


def series_order(series_uids: tf.Tensor, image_ids: tf.Tensor, positions: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(each slice's series index [N], the series numbered in UID order; the permutation [N] that sorts the slices
    by series, then by position with unknown positions last, then by image ID). Neither depends on the order the
    slices came in."""
    unique, first_seen = tf.unique(series_uids)
    series = tf.gather(tf.math.invert_permutation(lexicographic_order(unique)), first_seen)
    order = lexicographic_order(image_ids)
    order = tf.gather(order, tf.argsort(tf.gather(tf.where(tf.math.is_nan(positions), math.inf, positions), order),
                                        stable=True))
    return series, tf.gather(order, tf.argsort(tf.gather(series, order), stable=True))


def padded_series(values: tf.Tensor, sorted_series: tf.Tensor) -> tf.Tensor:
    """Slices sorted by series [N, ...] -> [series, longest, ...], zero-padded."""
    return tf.RaggedTensor.from_value_rowids(values, sorted_series).to_tensor()


class StudyScoringModule(tf.Module):
    """`ensemble` is the slice ensemble's SavedModel (loaded), `context_model` the Keras study-context model;
    `description` is written beside the weights."""

    def __init__(self, ensemble, context_model: tf.keras.Model, description: dict):
        super().__init__()
        self.ensemble = ensemble
        # As ScoringModule does with Keras members: the model stays out of the object graph, its variables in it.
        self.__dict__["context_model"] = context_model
        self.context_variables = list(context_model.variables)
        self.__dict__["description"] = description
        if hasattr(ensemble, "ood_threshold"):
            self.ood_threshold = ensemble.ood_threshold

    @tf.function(input_signature=[EXAMPLES_SPEC])
    def serve(self, examples):
        slices = self.ensemble.serve(examples)
        parsed = tf.io.parse_example(examples, _SERIES_SPEC)
        series, order = series_order(parsed[SERIES_UID], parsed[IMAGE_ID], parsed[SLICE_POSITION])
        sorted_series = tf.gather(series, order)
        count = tf.shape(examples)[0]
        embedding = tf.reshape(slices[EMBEDDING], [count, -1])

        def batch(values):
            return padded_series(tf.gather(values, order), sorted_series)

        positions = batch(parsed[SLICE_POSITION])
        mask = batch(tf.ones([count], tf.bool))
        steps = positions[:, 1:] - positions[:, :-1]
        steps = tf.where(tf.math.is_nan(steps) | ~mask[:, 1:], 0.0, steps)
        zeros = tf.zeros_like(positions[:, :1])  # [series, 1]: `steps` has no column when every series is one slice
        gaps = tf.stack([tf.concat([zeros, steps], 1), tf.concat([steps, zeros], 1)], axis=-1) / MM_PER_CM
        outputs = self.context_model({context.EMBEDDING: batch(embedding),
                                      context.PROBABILITIES: batch(slices[PROBABILITIES]),
                                      context.SPREAD: batch(slices[SPREAD]), GAPS: gaps, MASK: mask},
                                     training=False)
        refined_sorted = tf.boolean_mask(outputs[REFINED], mask)  # [N] in sorted order
        inverse = tf.math.invert_permutation(order)
        rank_in_series = tf.range(count) - tf.gather(tf.math.segment_min(tf.range(count), sorted_series),
                                                     sorted_series)
        passed_on = {name: value for name, value in slices.items() if name != EMBEDDING}
        return {**passed_on, REFINED_PROBABILITIES: tf.gather(refined_sorted, inverse),
                SERIES_INDEX: series, SLICE_ORDER: tf.gather(rank_in_series, inverse),
                STUDY_PROBABILITIES: tf.reduce_max(outputs[STUDY], axis=0)}

    @tf.function(input_signature=[EXAMPLES_SPEC])
    def transform_features(self, examples):
        return self.ensemble.transform_features(examples)

    def save(self, export_dir: str) -> None:
        tf.saved_model.save(self, export_dir, signatures={SERVING_SIGNATURE: self.serve,
                                                          TRANSFORM_SIGNATURE: self.transform_features})
        write_description(export_dir, self.description)
