"""The three members of the ensemble: one architecture, three training recipes.

| member | init seed | augmentation                        | sampling                          | loss          |
|--------|-----------|-------------------------------------|-----------------------------------|---------------|
| A      | 1         | standard: flip, rotation 10 deg,    | balanced: every batch holds >= 2  | binary        |
|        |           | shift 6%, zoom 10%                  | positives of each subtype         | cross-entropy |
| B      | 2         | strong: flip, rotation 20 deg, shift| natural (shuffled)                | binary        |
|        |           | 10%, zoom 20%, resized crop (>= 60% |                                   | cross-entropy |
|        |           | of the area), window jitter 10%     |                                   |               |
| C      | 3         | standard                            | hard cases: rare subtypes         | focal         |
|        |           |                                     | oversampled (epidural x4,         | (gamma 2)     |
|        |           |                                     | intraventricular x2)              |               |

All three: Adam, learning rate warmed up linearly over the first 5% of steps then cosine-decayed to zero,
batch size 32. Labels and metrics are in the project order (`ich_model.constants.LABELS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import tensorflow as tf

from ich_model.augment import STANDARD, STRONG, Augmentation, augment
from ich_model.constants import LABELS, NUM_LABELS, SUBTYPES

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
    sampling: str  # "natural", "balanced" or "hard"
    focal_gamma: float = 0.0  # 0 = plain binary cross-entropy
    learning_rate: float = 1e-3
    # For "hard" sampling: how much more often examples positive for a subtype are drawn.
    oversample: dict[str, float] = field(default_factory=dict)


MEMBERS: dict[str, Recipe] = {
    "a": Recipe("a", seed=1, augmentation=STANDARD, sampling="balanced"),
    "b": Recipe("b", seed=2, augmentation=STRONG, sampling="natural"),
    "c": Recipe("c", seed=3, augmentation=STANDARD, sampling="hard", focal_gamma=2.0,
                oversample={"epidural": 4.0, "intraventricular": 2.0}),
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


def sampled_stream(examples: tf.data.Dataset, recipe: Recipe, prevalence, seed: int) -> tf.data.Dataset:
    """An endless stream of (features, label) pairs drawn as the recipe says, unbatched. `prevalence` is the
    share of positives per label (project order) in `examples`; a subtype without positives gets no stream of
    its own (it would never yield).

    balanced: in every window of BATCH_SIZE draws, two come from each subtype's positives (so rare subtypes
      such as epidural are seen in every batch) and the rest from all examples;
    hard: all examples, plus extra draws of the positives of each subtype in `oversample`, weighted so that
      its positives come k times as often as in the data;
    natural: all examples, shuffled.
    """
    everything = examples.repeat().shuffle(1024, seed=seed)
    if recipe.sampling == "natural":
        return everything
    if recipe.sampling == "balanced":
        present = [i for i in range(len(SUBTYPES)) if prevalence[i] > 0]
        positives = [examples.filter(_positive_for(i)).repeat().shuffle(256, seed=seed + i) for i in present]
        slots = [k % len(present) for k in range(2 * len(present))]
        slots += [len(present)] * (BATCH_SIZE - len(slots))
        selector = tf.data.Dataset.from_tensor_slices(tf.constant(slots, tf.int64)).repeat()
        return tf.data.Dataset.choose_from_datasets([*positives, everything], selector)
    if recipe.sampling == "hard":
        names = [name for name in recipe.oversample if prevalence[LABELS.index(name)] > 0]
        streams = [everything] + [examples.filter(_positive_for(LABELS.index(name))).repeat()
                                  .shuffle(256, seed=seed + 7 + i) for i, name in enumerate(names)]
        # A positives-only stream at weight (k - 1) * p adds k - 1 times the natural share p of that subtype.
        weights = [1.0] + [(recipe.oversample[name] - 1.0) * float(prevalence[LABELS.index(name)])
                           for name in names]
        return tf.data.Dataset.sample_from_datasets(streams, weights=weights, seed=seed,
                                                    stop_on_empty_dataset=False)
    raise ValueError(f"unknown sampling {recipe.sampling!r}")


def training_batches(examples: tf.data.Dataset, recipe: Recipe, prevalence, batch_size: int = BATCH_SIZE,
                     seed: int | None = None, to_images=None) -> tf.data.Dataset:
    """(features, label) examples -> endless augmented (image, label) batches for this member. `to_images`
    turns a batch of features into images (for raw Examples: the transform graph); by default the features
    are the images."""
    seed = recipe.seed if seed is None else seed
    spec = recipe.augmentation
    to_images = to_images or (lambda features: features)
    return (sampled_stream(examples, recipe, prevalence, seed)
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
