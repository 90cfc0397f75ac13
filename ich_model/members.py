"""The three members of the ensemble: one architecture, three training recipes.

| member | init seed | augmentation                                          | emphasis                          |
|--------|-----------|-------------------------------------------------------|-----------------------------------|
| A      | 1         | standard: flip, rotation 10 deg, shift 6%, zoom 10%;  | none                              |
|        |           | scanner intensity (HU offset/scale, noise, kernel)    |                                   |
| B      | 2         | strong: flip, rotation 15 deg, shift 8%, zoom 15%;    | none                              |
|        |           | scanner intensity                                     |                                   |
| C      | 3         | standard geometry only                                | hard cases: subarachnoid and      |
|        |           |                                                       | epidural positives drawn 2x       |

All three sample balanced batches (every batch holds at least two positives of each subtype, so that rare
subtypes such as epidural are seen in every step; `sampled_prevalence` is the share of positives that this gives,
which the trainer corrects for before export) and train with binary cross-entropy and Adam, the learning rate
warmed up linearly over the first 5% of steps then cosine-decayed to zero, batch size 32 (the GPU presets' larger
batches scale the rate by the square-root rule, `peak_learning_rate`; a batch of 128 holds four windows of 32
draws, so the sampled prevalence is the same). Member C's hard cases
are the two subtypes that the benchmark's networks detect worst (subarachnoid: thin blood along the sulci and
cisterns; epidural: rare, and against the bone); it gets four of their positives per batch instead of two. The
emphasis is in the sampler, not the loss, so that cross-entropy stays a proper scoring rule: every member
learns its batches' prevalence, and the prior correction returns all three to the data's. Labels and metrics
are in the project order (`ich_model.constants.LABELS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ich_model.augment import STANDARD, STRONG, Augmentation, augment, with_scanner_intensity
from ich_model.constants import BATCH_SIZE, NUM_LABELS, SUBTYPES
from ich_model.metrics import WEIGHTED_LOG_LOSS, WeightedLogLoss, WeightedLogLossStandardError
from ich_model.model.network import prior_shift

WARMUP_SHARE = 0.05
POSITIVE_DRAWS = 2  # per subtype in every batch
HARD_DRAWS = 4  # per hard subtype (a recipe's hard_subtypes) in every batch
# The Trainer keeps the weights of the latest evaluation whose figure on the eval split is within one standard
# error of the lowest (kept_evaluation). The figure is the competition's weighted log loss of the output as it
# will be exported (moved from the balanced batches' prevalence to the data's): not the training loss, which
# scores the batches' prevalence against the eval split's labels and penalised member C's emphasis, and not the
# macro AUC, which on a small eval split is noisy for rare subtypes and peaked at early, poorly calibrated
# weights (docs/decisions.md, "Which checkpoint a member keeps").
CHECKPOINT_METRIC = WEIGHTED_LOG_LOSS
CHECKPOINT_METRIC_SE = f"{CHECKPOINT_METRIC}_se"
# The eval AUC's thresholds, evenly spaced in logit space: rare subtypes' probabilities sit far below 0.01, where
# Keras' default (200 thresholds evenly spaced in [0, 1]) cannot rank them and reports a much lower AUC.
AUC_THRESHOLDS = [float(t) for t in tf.sigmoid(tf.linspace(-12.0, 12.0, 481)).numpy()]


@dataclass(frozen=True)
class Recipe:
    name: str
    seed: int
    augmentation: Augmentation
    hard_subtypes: tuple[str, ...] = ()  # HARD_DRAWS of their positives per batch, not POSITIVE_DRAWS
    learning_rate: float = 1e-3


MEMBERS: dict[str, Recipe] = {
    "a": Recipe("a", seed=1, augmentation=with_scanner_intensity(STANDARD)),
    "b": Recipe("b", seed=2, augmentation=with_scanner_intensity(STRONG)),
    "c": Recipe("c", seed=3, augmentation=STANDARD, hard_subtypes=("subarachnoid", "epidural")),
}


def peak_learning_rate(recipe: Recipe, batch_size: int = BATCH_SIZE) -> float:
    """The recipe's rate, which is for the seed's batch of 32, at another batch size by the square-root rule that
    suits Adam (Malladi et al., NeurIPS 2022: the rate grows with the square root of the batch, not linearly as
    for SGD); the warm-up absorbs the early steps' larger updates."""
    return recipe.learning_rate * math.sqrt(batch_size / BATCH_SIZE)


def learning_rate_schedule(recipe: Recipe, total_steps: int,
                           batch_size: int = BATCH_SIZE) -> tf.keras.optimizers.schedules.LearningRateSchedule:
    """Linear warm-up to the peak rate (peak_learning_rate) over the first 5% of steps, then cosine decay to
    zero."""
    warmup = max(1, int(WARMUP_SHARE * total_steps))
    return tf.keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=max(1, total_steps - warmup), alpha=0.0,
        warmup_target=peak_learning_rate(recipe, batch_size), warmup_steps=warmup)


def _positive_for(index: int):
    return lambda features, label: tf.equal(label[index], 1.0)


def _present_subtypes(prevalence) -> list[int]:
    """Subtypes with positives; one without gets no stream of its own (it would never yield)."""
    return [i for i in range(len(SUBTYPES)) if prevalence[i] > 0]


def _slots(present: list[int], hard_subtypes: tuple[str, ...]) -> list[int]:
    """Which stream each draw of one window comes from: k < len(present) is the positives of subtype
    present[k] (two draws, four for a hard subtype), len(present) is all examples."""
    unknown = set(hard_subtypes) - set(SUBTYPES)
    if unknown:
        raise ValueError(f"hard_subtypes {sorted(unknown)} are not subtypes; expected some of {SUBTYPES}")
    hard = {SUBTYPES.index(name) for name in hard_subtypes}
    draws = [HARD_DRAWS if subtype in hard else POSITIVE_DRAWS for subtype in present]
    # Round-robin over the subtypes, so that a batch smaller than the window still mixes them.
    slots = [k for turn in range(max(draws, default=0)) for k, count in enumerate(draws) if turn < count]
    return slots + [len(present)] * (BATCH_SIZE - len(slots))


def balanced_stream(examples: tf.data.Dataset, prevalence, seed: int, hard_subtypes: tuple[str, ...] = (),
                    positives: dict[int, tf.data.Dataset] | None = None) -> tf.data.Dataset:
    """An endless stream of (features, label) pairs, unbatched: in every window of BATCH_SIZE draws, two come
    from each subtype's positives (four from each of `hard_subtypes`') and the rest from all examples,
    shuffled. `prevalence` is the share of positives per label (project order) in `examples`. `positives` maps
    each subtype index with positives to a dataset of exactly its positives among `examples` (the ExampleGen's
    positive folders), so that every stream reads only what it yields; without it, each subtype's stream filters
    `examples`, which reads about 1/prevalence of them per draw."""
    everything = examples.repeat().shuffle(1024, seed=seed)
    present = _present_subtypes(prevalence)
    if positives is None:
        positives = {i: examples.filter(_positive_for(i)) for i in present}
    elif set(positives) != set(present):
        raise ValueError(f"positive streams for subtypes {sorted(positives)}, but the examples hold positives of "
                         f"{present} (indices into {SUBTYPES})")
    streams = [positives[i].repeat().shuffle(256, seed=seed + i) for i in present]
    selector = tf.data.Dataset.from_tensor_slices(tf.constant(_slots(present, hard_subtypes), tf.int64)).repeat()
    return tf.data.Dataset.choose_from_datasets([*streams, everything], selector)


def sampled_prevalence(cooccurrence: np.ndarray, count: int, hard_subtypes: tuple[str, ...] = ()) -> np.ndarray:
    """The share of positives per label in balanced_stream's output, which is what a member learns to predict.
    `cooccurrence[i, j]` counts the examples positive for both labels i and j among `count` (its diagonal: the
    positives per label). A draw from subtype i's positives is positive for label j with the share
    cooccurrence[i, j] / cooccurrence[i, i]; a draw from all examples with the plain prevalence."""
    cooccurrence = np.asarray(cooccurrence, dtype=np.float64)
    prevalence = np.diag(cooccurrence) / count
    present = _present_subtypes(prevalence)
    slots = _slots(present, hard_subtypes)
    rows = [cooccurrence[present[s]] / cooccurrence[present[s], present[s]] if s < len(present) else prevalence
            for s in slots]
    return np.mean(rows, axis=0)


def training_batches(examples: tf.data.Dataset, recipe: Recipe, prevalence, batch_size: int = BATCH_SIZE,
                     seed: int | None = None, to_images=None,
                     positives: dict[int, tf.data.Dataset] | None = None) -> tf.data.Dataset:
    """(features, label) examples -> endless augmented (image, label) batches for this member. `to_images`
    turns a batch of features into images (for raw Examples: the transform graph); by default the features
    are the images. `positives`: each subtype's positives, as balanced_stream takes them."""
    seed = recipe.seed if seed is None else seed
    spec = recipe.augmentation
    to_images = to_images or (lambda features: features)
    return (balanced_stream(examples, prevalence, seed, recipe.hard_subtypes, positives)
            .batch(batch_size, drop_remainder=True)
            .map(lambda features, labels: (augment(to_images(features), spec), labels),
                 num_parallel_calls=tf.data.AUTOTUNE)
            .prefetch(tf.data.AUTOTUNE))


def compile_member(model: tf.keras.Model, recipe: Recipe, total_steps: int, trained_on=None,
                   actual=None, batch_size: int = BATCH_SIZE) -> tf.keras.Model:
    """Binary cross-entropy, Adam on the recipe's schedule, and as metrics the macro AUC and the weighted log
    loss (with its standard error) of the output moved from the prevalence it is `trained_on` (the balanced
    batches') to the `actual` one (the data's; `prior_shift`, which `correct_label_prior` applies before
    export); without them, of the output as it is."""
    shift = None if trained_on is None else prior_shift(trained_on, actual)
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate_schedule(recipe, total_steps, batch_size)),
        loss=tf.keras.losses.BinaryCrossentropy(),
        metrics=[tf.keras.metrics.AUC(multi_label=True, num_labels=NUM_LABELS, thresholds=AUC_THRESHOLDS,
                                      name="macro_auc"),
                 WeightedLogLoss(name=CHECKPOINT_METRIC, logit_shift=shift),
                 WeightedLogLossStandardError(name=CHECKPOINT_METRIC_SE, logit_shift=shift)],
    )
    return model


def kept_evaluation(losses: list[float], standard_errors: list[float]) -> int | None:
    """The index of the evaluation whose weights the Trainer keeps: the latest one whose loss is within one
    standard error of the lowest loss up to it (Breiman's one-standard-error rule). Late in the schedule the
    learning rate has decayed and the weights have seen more data; an earlier evaluation that is better only by
    eval-split noise does not replace them, while a rise of more than the noise (overfitting) still does. None
    when no loss is finite."""
    kept, best, best_se = None, None, None
    for index, (loss, se) in enumerate(zip(losses, standard_errors, strict=True)):
        if not np.isfinite(loss):
            continue
        if best is None or loss < best:
            kept, best, best_se = index, loss, se if np.isfinite(se) else 0.0
        elif loss <= best + best_se:
            kept = index
    return kept


class KeepWithinOneStandardError(tf.keras.callbacks.Callback):
    """Saves the weights at each evaluation that `kept_evaluation` would keep, so that `path` ends up holding
    the kept ones."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.losses: list[float] = []
        self.standard_errors: list[float] = []
        self.kept: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.losses.append(float(logs.get(f"val_{CHECKPOINT_METRIC}", np.nan)))
        self.standard_errors.append(float(logs.get(f"val_{CHECKPOINT_METRIC_SE}", np.nan)))
        kept = kept_evaluation(self.losses, self.standard_errors)
        if kept is not None and kept == len(self.losses) - 1:
            self.model.save_weights(self.path)
            self.kept = kept
