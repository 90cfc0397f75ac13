"""The study-context model: a bidirectional GRU over a series' slices, in order along the slice normal.

Per slice it reads the slice ensemble's embedding (projected and normalised), its probabilities (as log-odds) and
spread, and the gaps to the neighbouring slices; it returns refined per-slice probabilities [S, 6] and a study head
[6]. Both heads add a learned correction to what the slice stage already says (the ensemble's log-odds per slice,
their maximum over the series for the study), and the corrections start at zero: an untrained model gives the
slice ensemble's probabilities and the max-over-slices rule, and training can only move away from them where the
data says so.

Padding: a batch of series is padded to its longest; `mask` marks the real slices. The GRUs skip masked steps in
both directions, the study head pools over real slices only, and the loss and metrics count real slices only, so a
padded series scores exactly as the same series alone.

Loss: the RSNA weighted binary cross-entropy (`any` weighted 2) of the refined slices, plus that of the study head.
Augmentation as the RSNA winners did: random reversal of the order, and keeping every other slice at random.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ich_model import context
from ich_model.constants import NUM_LABELS
from ich_model.metrics import EPSILON, LABEL_WEIGHTS, weighted_log_loss

MASK = "mask"
GAPS = "gaps"  # [S, 2]: gap before and after, in cm (so that inputs are near unit scale)
REFINED = "refined"  # [S, 6] per-slice probabilities
STUDY = "study"  # [6] study probabilities
INPUTS = (context.EMBEDDING, context.PROBABILITIES, context.SPREAD, GAPS, MASK)
MM_PER_CM = 10.0


def parse_record(serialized: tf.Tensor) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """One serialized study record (ich_model.context) -> (inputs [S, ...], labels: slices [S, 6], study [6])."""
    spec = {name: tf.io.VarLenFeature(tf.float32) for name in
            (context.EMBEDDING, context.PROBABILITIES, context.SPREAD, context.GAP_BEFORE, context.GAP_AFTER)}
    spec.update({context.LENGTH: tf.io.FixedLenFeature([1], tf.int64),
                 context.EMBEDDING_SIZE: tf.io.FixedLenFeature([1], tf.int64),
                 context.SLICE_LABELS: tf.io.VarLenFeature(tf.int64),
                 context.STUDY_LABEL: tf.io.FixedLenFeature([NUM_LABELS], tf.int64)})
    parsed = tf.io.parse_single_example(serialized, spec)
    length = parsed[context.LENGTH][0]

    def per_slice(name, width, dtype=tf.float32):
        return tf.cast(tf.reshape(tf.sparse.to_dense(parsed[name]), [length, width]), dtype)

    inputs = {
        context.EMBEDDING: per_slice(context.EMBEDDING, parsed[context.EMBEDDING_SIZE][0]),
        context.PROBABILITIES: per_slice(context.PROBABILITIES, NUM_LABELS),
        context.SPREAD: per_slice(context.SPREAD, NUM_LABELS),
        GAPS: tf.stack([tf.sparse.to_dense(parsed[context.GAP_BEFORE]),
                        tf.sparse.to_dense(parsed[context.GAP_AFTER])], axis=-1) / MM_PER_CM,
        MASK: tf.ones([length], tf.bool),
    }
    labels = {REFINED: per_slice(context.SLICE_LABELS, NUM_LABELS),
              STUDY: tf.cast(parsed[context.STUDY_LABEL], tf.float32)}
    return inputs, labels


def augment(inputs: dict, labels: dict, seed: tf.Tensor) -> tuple[dict, dict]:
    """Reverse the order (p 0.5), then keep every other slice (p 0.5, for series of four slices or more); the
    gaps follow the slices (reversed: before and after swap; thinned: each gap spans two slices)."""
    reverse_seed, thin_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    reverse = tf.random.stateless_uniform([], reverse_seed) < 0.5
    thin = tf.logical_and(tf.random.stateless_uniform([], thin_seed) < 0.5, tf.shape(inputs[MASK])[0] >= 4)

    def reversed_(tensor, name):
        flipped = tf.reverse(tensor, axis=[0])
        return flipped[:, ::-1] if name == GAPS else flipped

    def thinned(tensor, name):
        if name != GAPS:
            return tensor[::2]
        before = tensor[:, 0]
        spans = before[1:-1:2] + before[2::2]  # from kept slice 2i to 2i + 2
        return tf.stack([tf.concat([[0.0], spans], 0), tf.concat([spans, [0.0]], 0)], axis=-1)

    slices = {**inputs, REFINED: labels[REFINED]}
    for transform, flag in ((reversed_, reverse), (thinned, thin)):
        slices = {name: tf.cond(flag, lambda t=t, n=name, f=transform: f(t, n), lambda t=t: t)
                  for name, t in slices.items()}
    # The study label stays the series' own: thinning may drop its only positive slice, which the study still has.
    return {name: t for name, t in slices.items() if name != REFINED}, {REFINED: slices[REFINED],
                                                                       STUDY: labels[STUDY]}


def study_batches(file_pattern: str | list[str], batch_size: int, training: bool, seed: int = 0) -> tf.data.Dataset:
    """Padded batches of study records (gzipped TFRecords); for training, shuffled, augmented and repeated."""
    files = tf.io.gfile.glob(file_pattern) if isinstance(file_pattern, str) else file_pattern
    if not files:
        raise ValueError(f"no study records match {file_pattern}")
    records = tf.data.TFRecordDataset(sorted(files), compression_type="GZIP").map(parse_record)
    if training:
        records = records.shuffle(1024, seed=seed).repeat()
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        records = tf.data.Dataset.zip((records, seeds)).map(
            lambda example, pair: augment(*example, tf.cast(pair, tf.int64)))
    return records.padded_batch(batch_size, drop_remainder=False).prefetch(tf.data.AUTOTUNE)


def _logit(probabilities: tf.Tensor) -> tf.Tensor:
    p = tf.clip_by_value(probabilities, EPSILON, 1.0 - EPSILON)
    return tf.math.log(p) - tf.math.log1p(-p)


def _masked_max(tensor_and_mask):
    """[B, S, C] and its mask [B, S] -> [B, C]: the maximum over the real slices."""
    tensor, mask = tensor_and_mask
    return tf.reduce_max(tf.where(mask[..., None], tensor, tf.float32.min), axis=1)


def build_context_model(embedding_size: int, units: int = 64, seed: int | None = None) -> tf.keras.Model:
    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    embedding = tf.keras.Input([None, embedding_size], name=context.EMBEDDING)
    probabilities = tf.keras.Input([None, NUM_LABELS], name=context.PROBABILITIES)
    spread = tf.keras.Input([None, NUM_LABELS], name=context.SPREAD)
    gaps = tf.keras.Input([None, 2], name=GAPS)
    mask = tf.keras.Input([None], dtype=tf.bool, name=MASK)

    slice_logits = tf.keras.layers.Lambda(_logit, name="slice_logits")(probabilities)
    projected = tf.keras.layers.LayerNormalization(name="embedding_norm")(
        tf.keras.layers.Dense(units, name="embedding_projection")(embedding))
    features = tf.keras.layers.Concatenate(name="slice_features")([projected, slice_logits / 4.0, spread, gaps])
    sequence = tf.keras.layers.Bidirectional(tf.keras.layers.GRU(units, return_sequences=True), name="bigru_1")(
        features, mask=mask)
    sequence = tf.keras.layers.Bidirectional(tf.keras.layers.GRU(units, return_sequences=True), name="bigru_2")(
        sequence, mask=mask)

    correction = tf.keras.layers.Dense(NUM_LABELS, kernel_initializer="zeros", name="slice_correction")(sequence)
    refined = tf.keras.layers.Activation("sigmoid", name=REFINED)(slice_logits + correction)

    pool = tf.keras.layers.Lambda(_masked_max, name="study_pool")
    pooled, max_logits = pool([sequence, mask]), pool([slice_logits, mask])
    study_correction = tf.keras.layers.Dense(NUM_LABELS, kernel_initializer="zeros", name="study_correction")(pooled)
    study = tf.keras.layers.Activation("sigmoid", name=STUDY)(max_logits + study_correction)
    inputs = {context.EMBEDDING: embedding, context.PROBABILITIES: probabilities, context.SPREAD: spread,
              GAPS: gaps, MASK: mask}
    return tf.keras.Model(inputs, {REFINED: refined, STUDY: study}, name="study_context")


def weighted_cross_entropy(labels: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """[..., 6] -> [...]: the RSNA weighted binary cross-entropy of each row (ich_model.metrics.weighted_log_loss
    is its mean over rows)."""
    p = tf.clip_by_value(probabilities, EPSILON, 1.0 - EPSILON)
    losses = -(labels * tf.math.log(p) + (1.0 - labels) * tf.math.log1p(-p))
    weights = tf.constant(LABEL_WEIGHTS, tf.float32)
    return tf.reduce_sum(losses * weights, axis=-1) / tf.reduce_sum(weights)


def context_loss(labels: dict, outputs: dict, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(slice loss over the real slices of the batch, study loss over its series)."""
    weights = tf.cast(mask, tf.float32)
    per_slice = weighted_cross_entropy(labels[REFINED], outputs[REFINED])
    slice_loss = tf.reduce_sum(per_slice * weights) / tf.maximum(tf.reduce_sum(weights), 1.0)
    return slice_loss, tf.reduce_mean(weighted_cross_entropy(labels[STUDY], outputs[STUDY]))


def fit_context_model(model: tf.keras.Model, batches: tf.data.Dataset, steps: int,
                      learning_rate: float = 1e-3, log=None) -> list[float]:
    """Adam with a cosine decay over `steps`; returns the training loss (slice + study) per step."""
    schedule = tf.keras.optimizers.schedules.CosineDecay(learning_rate, max(steps, 1))
    optimizer = tf.keras.optimizers.Adam(schedule)

    @tf.function
    def step(inputs, labels):
        with tf.GradientTape() as tape:
            outputs = model(inputs, training=True)
            slice_loss, study_loss = context_loss(labels, outputs, inputs[MASK])
            loss = slice_loss + study_loss
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables,
                                      strict=True))
        return loss

    losses = []
    for index, (inputs, labels) in enumerate(batches.take(steps)):
        losses.append(float(step(inputs, labels)))
        if log and (index + 1) % max(steps // 5, 1) == 0:
            log(f"context model: step {index + 1}/{steps}, loss {np.mean(losses[-10:]):.4f}")
    return losses


@dataclass
class StudyPredictions:
    """Over a set of series, padding removed: per series the refined and the slice-only probabilities [S, 6] and
    the slice labels; per series the study head, the max-over-slices rule and the study labels [N, 6]."""

    refined: list[np.ndarray]
    slice_only: list[np.ndarray]
    slice_labels: list[np.ndarray]
    study: np.ndarray
    max_rule: np.ndarray
    study_labels: np.ndarray

    def figures(self) -> dict[str, float]:
        """The weighted log loss of each output against its labels (slices, and series)."""
        slices = np.concatenate(self.slice_labels)
        return {"slice_refined": weighted_log_loss(slices, np.concatenate(self.refined)),
                "slice_only": weighted_log_loss(slices, np.concatenate(self.slice_only)),
                "study_head": weighted_log_loss(self.study_labels, self.study),
                "study_max_rule": weighted_log_loss(self.study_labels, self.max_rule)}


def predict_studies(model: tf.keras.Model, batches: tf.data.Dataset) -> StudyPredictions:
    refined, slice_only, slice_labels, study, max_rule, study_labels = [], [], [], [], [], []
    for inputs, labels in batches:
        outputs = model(inputs, training=False)
        lengths = tf.reduce_sum(tf.cast(inputs[MASK], tf.int32), axis=1).numpy()
        for row, length in enumerate(lengths):
            refined.append(outputs[REFINED][row, :length].numpy())
            slice_only.append(inputs[context.PROBABILITIES][row, :length].numpy())
            slice_labels.append(labels[REFINED][row, :length].numpy())
            max_rule.append(slice_only[-1].max(axis=0))
        study.append(outputs[STUDY].numpy())
        study_labels.append(labels[STUDY].numpy())
    return StudyPredictions(refined, slice_only, slice_labels, np.concatenate(study), np.stack(max_rule),
                            np.concatenate(study_labels))
