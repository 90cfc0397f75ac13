"""The three members of the ensemble: one architecture, three training recipes.

| member | init seed | augmentation                                          | loss                         |
|--------|-----------|-------------------------------------------------------|------------------------------|
| A      | 1         | standard: flip, rotation 10 deg, shift 6%, zoom 10%   | binary cross-entropy         |
| B      | 2         | strong: flip, rotation 15 deg, shift 8%, zoom 15%     | binary cross-entropy         |
| C      | 3         | standard                                              | focal (gamma 1): hard cases  |
|        |           |                                                       | weigh more than easy ones    |

All three sample balanced batches (every batch holds at least two positives of each subtype, so that rare
subtypes such as epidural are seen in every step; `sampled_prevalence` is the share of positives that this gives,
which the trainer corrects for before export) and train with Adam, the learning rate warmed up linearly over
the first 5% of steps then cosine-decayed to zero, batch size 32. Labels and metrics are in the project order
(`ich_model.constants.LABELS`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ich_model.augment import STANDARD, STRONG, Augmentation, augment
from ich_model.constants import NUM_LABELS, SUBTYPES

BATCH_SIZE = 32
WARMUP_SHARE = 0.05
# The eval AUC's thresholds, evenly spaced in logit space: rare subtypes' probabilities sit far below 0.01, where
# Keras' default (200 thresholds evenly spaced in [0, 1]) cannot rank them and reports a much lower AUC.
AUC_THRESHOLDS = [float(t) for t in tf.sigmoid(tf.linspace(-12.0, 12.0, 481)).numpy()]


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    augmentation: Augmentation
    focal_gamma: float = 0.0  # 0 = plain binary cross-entropy
    learning_rate: float = 1e-3


MEMBERS: dict[str, Recipe] = {
    "a": Recipe("a", seed=1, augmentation=STANDARD),
    "b": Recipe("b", seed=2, augmentation=STRONG),
    "c": Recipe("c", seed=3, augmentation=STANDARD, focal_gamma=1.0),
}


def learning_rate_schedule(recipe: Recipe, total_steps: int) -> tf.keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up to the recipe's rate over the first 5% of steps, then cosine decay to zero."""
    warmup = max(1, int(WARMUP_SHARE * total_steps))
    return tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(1, total_steps - warmup), alpha=0.0,
        warmup_target=recipe.learning_rate, warmup_steps=warmup)


class FocalBinaryCrossentropy(tf.keras.losses.Loss):
    """Binary cross-entropy with each term scaled by (1 - p_t)^gamma, so confident, easy cases count less
    (Lin et al., "Focal Loss for Dense Object Detection", 2017)."""

    def __init__(self, gamma: float = 2.0, name: str = "focal_binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma = gamma

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype)
        eps = tf.keras.backend.epsilon()
        p = tf.clip_by_value(y_pred, eps, 1.0 - eps)
        p_t = y_true * p + (1.0 - y_true) * (1.0 - p)
        return tf.reduce_mean(-tf.pow(1.0 - p_t, self.gamma) * tf.math.log(p_t), axis=-1)

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma}


def loss_for(recipe: Recipe) -> tf.keras.losses.Loss:
    if recipe.focal_gamma:
        return FocalBinaryCrossentropy(recipe.focal_gamma)
    return tf.keras.losses.BinaryCrossentropy()


def _positive_for(index: int):
    return lambda features, label: tf.equal(label[index], 1.0)


def _present_subtypes(prevalence) -> list[int]:
    """Subtypes with positives; one without gets no stream of its own (it would never yield)."""
    return [i for i in range(len(SUBTYPES)) if prevalence[i] > 0]


def _slots(present: int) -> list[int]:
    """Which stream each draw of one window comes from: 0..present-1 are the subtypes' positives (two draws
    each), `present` is all examples."""
    slots = [k % present for k in range(2 * present)]
    return slots + [present] * (BATCH_SIZE - len(slots))


def balanced_stream(examples: tf.data.Dataset, prevalence, seed: int) -> tf.data.Dataset:
    """An endless stream of (features, label) pairs, unbatched: in every window of BATCH_SIZE draws, two come
    from each subtype's positives and the rest from all examples, shuffled. `prevalence` is the share of
    positives per label (project order) in `examples`."""
    everything = examples.repeat().shuffle(1024, seed=seed)
    present = _present_subtypes(prevalence)
    positives = [examples.filter(_positive_for(i)).repeat().shuffle(256, seed=seed + i) for i in present]
    selector = tf.data.Dataset.from_tensor_slices(tf.constant(_slots(len(present)), tf.int64)).repeat()
    return tf.data.Dataset.choose_from_datasets([*positives, everything], selector)


def sampled_prevalence(cooccurrence: np.ndarray, count: int) -> np.ndarray:
    """The share of positives per label in balanced_stream's output, which is what a member learns to predict.
    `cooccurrence[i, j]` counts the examples positive for both labels i and j among `count` (its diagonal: the
    positives per label). A draw from subtype i's positives is positive for label j with the share
    cooccurrence[i, j] / cooccurrence[i, i]; a draw from all examples with the plain prevalence."""
    cooccurrence = np.asarray(cooccurrence, dtype=np.float64)
    prevalence = np.diag(cooccurrence) / count
    present = _present_subtypes(prevalence)
    slots = _slots(len(present))
    rows = [cooccurrence[present[s]] / cooccurrence[present[s], present[s]] if s < len(present) else prevalence
            for s in slots]
    return np.mean(rows, axis=0)


def training_batches(examples: tf.data.Dataset, recipe: Recipe, prevalence, batch_size: int = BATCH_SIZE,
                     seed: int | None = None, to_images=None) -> tf.data.Dataset:
    """(features, label) examples -> endless augmented (image, label) batches for this member. `to_images`
    turns a batch of features into images (for raw Examples: the transform graph); by default the features
    are the images."""
    seed = recipe.seed if seed is None else seed
    spec = recipe.augmentation
    to_images = to_images or (lambda features: features)
    return (balanced_stream(examples, prevalence, seed)
            .batch(batch_size, drop_remainder=True)
            .map(lambda features, labels: (augment(to_images(features), spec), labels),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def compile_member(model: tf.keras.Model, recipe: Recipe, total_steps: int) -> tf.keras.Model:
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate_schedule(recipe, total_steps)),
        loss=loss_for(recipe),
        metrics=[tf.keras.metrics.AUC(multi_label=True, num_labels=NUM_LABELS, thresholds=AUC_THRESHOLDS,
                                      name="macro_auc")],
    )
    return model
