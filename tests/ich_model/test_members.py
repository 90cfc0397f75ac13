"""Member recipes: schedules against the formula, samplers by counting, and a real short fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from ich_model.augment import Augmentation, augment, scanner_intensity
from ich_model.constants import LABELS, NUM_LABELS, RGB_WINDOWS, SUBTYPES
from ich_model.labels import read_rsna_labels
from ich_model.members import (
    BATCH_SIZE,
    CHECKPOINT_METRIC,
    CHECKPOINT_METRIC_SE,
    MEMBERS,
    KeepWithinOneStandardError,
    balanced_stream,
    compile_member,
    kept_evaluation,
    learning_rate_schedule,
    sampled_prevalence,
    training_batches,
)
from ich_model.metrics import weighted_log_loss
from ich_model.model.network import classification_head, correct_label_prior
from ich_model.model.presets import build_cascade
from ich_model.preprocessing import preprocess_dicom
from ich_model.synth import IMAGES_DIR, LABELS_CSV, generate_dataset


@pytest.mark.parametrize("batch_size", [BATCH_SIZE, 128, 512])
def test_learning_rate_warms_up_then_follows_a_cosine(batch_size):
    recipe, total = MEMBERS["a"], 1000
    schedule = learning_rate_schedule(recipe, total, batch_size)
    warmup = int(0.05 * total)
    lr = recipe.learning_rate * (batch_size / 32) ** 0.5  # the square-root rule from the seed's batch of 32
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(warmup // 2)) == pytest.approx(lr * (warmup // 2) / warmup, rel=1e-4)
    for step in (warmup, warmup + (total - warmup) // 2, total - 1):
        expected = 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-3, abs=1e-9)


def label_only_examples(n: int, epidural_every: int = 50) -> tuple[tf.data.Dataset, np.ndarray]:
    """n examples with 1x1 images and labels in which epidural is rare."""
    rng = np.random.default_rng(1)
    labels = (rng.random((n, NUM_LABELS)) < 0.1).astype(np.float32)
    labels[:, 0] = (np.arange(n) % epidural_every == 0)
    labels[:, -1] = labels[:, :-1].max(axis=1)
    images = np.zeros((n, 1, 1, 3), np.float32)
    return tf.data.Dataset.from_tensor_slices((images, labels)), labels.mean(axis=0)


@pytest.mark.parametrize("member", ["a", "c"])
def test_balanced_sampling_puts_every_subtype_in_every_batch_and_hard_ones_twice_as_often(member):
    examples, prevalence = label_only_examples(1000)
    hard = MEMBERS[member].hard_subtypes
    least = np.array([4 if name in hard else 2 for name in SUBTYPES])
    stream = balanced_stream(examples, prevalence, seed=0, hard_subtypes=hard).batch(BATCH_SIZE).take(30)
    for _, labels in stream:
        per_subtype = labels.numpy()[:, :-1].sum(axis=0)
        assert (per_subtype >= least).all(), per_subtype


def test_member_c_draws_more_epidural_positives_than_member_a():
    examples, prevalence = label_only_examples(1000)
    epidural = LABELS.index("epidural")

    def drawn(member):
        stream = balanced_stream(examples, prevalence, seed=0, hard_subtypes=MEMBERS[member].hard_subtypes)
        return np.concatenate([labels.numpy() for _, labels in stream.batch(BATCH_SIZE).take(100)])[:, epidural]

    # Two more draws per batch from epidural's positives; the other draws hold epidural 2% of the time.
    extra_per_batch = (drawn("c").mean() - drawn("a").mean()) * BATCH_SIZE
    assert extra_per_batch == pytest.approx(2.0, abs=0.25)


def test_an_unknown_hard_subtype_is_a_clear_error():
    examples, prevalence = label_only_examples(100)
    with pytest.raises(ValueError, match="'cerebellar'"):
        balanced_stream(examples, prevalence, seed=0, hard_subtypes=("cerebellar",))


@pytest.mark.parametrize("member", ["a", "c"])
def test_sampled_prevalence_is_the_share_of_positives_that_balanced_batches_hold(member):
    examples, prevalence = label_only_examples(1000)
    hard = MEMBERS[member].hard_subtypes
    labels = np.stack([label.numpy() for _, label in examples])
    expected = sampled_prevalence(labels.T @ labels, len(labels), hard)
    windows = 400
    drawn = np.concatenate([batch.numpy() for _, batch in
                            balanced_stream(examples, prevalence, seed=0, hard_subtypes=hard)
                            .batch(BATCH_SIZE).take(windows)])
    assert np.allclose(drawn.mean(axis=0), expected, atol=0.01), (drawn.mean(axis=0), expected)
    assert (expected > prevalence + 0.05).all()  # every label, `any` included, is over-represented


def test_correcting_the_label_prior_moves_each_logit_by_the_change_of_log_odds():
    trained_on, actual = np.array([0.3, 0.2, 0.25, 0.1, 0.4, 0.6]), np.array([0.02, 0.05, 0.0, 0.01, 0.1, 0.2])
    images = tf.keras.Input((8, 8, 3))
    model = tf.keras.Model(images, classification_head(tf.keras.layers.Conv2D(4, 3)(images), trained_on, 0.0))
    x = np.random.default_rng(4).random((16, 8, 8, 3)).astype(np.float32)
    before = model.predict(x, verbose=0).astype(np.float64)
    correct_label_prior(model, trained_on, actual)
    after = model.predict(x, verbose=0).astype(np.float64)

    def logit(p):
        return np.log(p / (1 - p))

    clipped = np.clip(actual, 1e-4, 1 - 1e-4)  # a label without positives gets the floor, not -inf
    shift = logit(clipped) - logit(trained_on)
    assert np.allclose(logit(after) - logit(before), shift, atol=1e-3)


def test_flip_only_augmentation_gives_the_image_or_its_mirror():
    rng = np.random.default_rng(2)
    images = rng.random((16, 32, 32, 3)).astype(np.float32)
    out = augment(tf.constant(images), Augmentation(flip=True)).numpy()
    for original, result in zip(images, out, strict=True):
        assert np.allclose(result, original, atol=1e-6) or np.allclose(result, original[:, ::-1], atol=1e-6)


def test_strong_augmentation_keeps_images_in_range():
    images = tf.random.uniform((8, 64, 64, 3))
    out = augment(images, MEMBERS["b"].augmentation).numpy()
    assert out.shape == (8, 64, 64, 3) and out.min() >= 0.0 and out.max() <= 1.0


def _windowed(hu: np.ndarray) -> np.ndarray:
    """numpy's windowing of [B, H, W] HU into [B, H, W, 3], as constants.Window defines it."""
    return np.stack([np.clip((hu - w.lower) / w.width, 0.0, 1.0) for w in RGB_WINDOWS], axis=-1)


def test_hu_offset_and_scale_act_on_the_hounsfield_units_behind_every_window():
    # HU of soft tissue, inside every window (no channel saturates), so the jitter is seen in all three.
    hu = np.random.default_rng(5).uniform(5.0, 75.0, (6, 16, 16)).astype(np.float32)
    out = scanner_intensity(tf.constant(_windowed(hu)), Augmentation(hu_offset=8.0, hu_scale=0.05)).numpy()
    for original, result in zip(hu, out, strict=True):
        # The blood window's values give the example's own HU map (value * width + lower): a line in the
        # original HU, whose slope and intercept are the drawn scale and offset; the other windows agree.
        blood = RGB_WINDOWS[0]
        jittered = result[..., 0] * blood.width + blood.lower
        scale, offset = np.polyfit(original.ravel(), jittered.ravel(), 1)
        assert abs(scale - 1.0) <= 0.05 + 1e-4 and abs(offset) <= 8.0 + 75.0 * 0.05 + 1e-3
        assert np.allclose(np.clip(result, 0.0, 1.0), _windowed(scale * original + offset), atol=1e-4)


def test_scanner_noise_is_one_hounsfield_field_and_saturated_pixels_stay_saturated():
    hu = np.full((4, 32, 32), 30.0, np.float32)
    hu[:, :, :8] = 1500.0  # bone: saturated in the blood and brain windows
    hu[:, :, 8:16] = -1000.0  # air: saturated low in every window
    out = scanner_intensity(tf.constant(_windowed(hu)), Augmentation(noise_hu=10.0)).numpy()
    noise_hu = [(out[..., 16:, c] - _windowed(hu)[..., 16:, c]) * w.width for c, w in enumerate(RGB_WINDOWS)]
    assert np.allclose(noise_hu[0], noise_hu[1], atol=1e-3) and np.allclose(noise_hu[0], noise_hu[2], atol=1e-2)
    assert 0.0 < noise_hu[0].std() <= 10.0 * 1.1
    assert (out[:, :, 8:16] == 0.0).all() and (out[:, :, :8, :2] == 1.0).all()


def synthetic_images(directory, patients: int, slices_per_study: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Windowed images of a generated DICOM set (every study positive) and their labels, as float32."""
    generate_dataset(directory, patients=patients, slices_per_study=slices_per_study, seed=seed, size=128,
                     positive_fraction=1.0, progress=False)
    table = read_rsna_labels(directory / LABELS_CSV)
    paths = sorted((directory / IMAGES_DIR).glob("*.dcm"))
    images = np.stack([preprocess_dicom(p) for p in paths])
    return images, np.stack([table.labels[p.stem] for p in paths]).astype(np.float32)


def test_a_member_fit_lowers_its_loss(tmp_path):
    images, labels = synthetic_images(tmp_path, patients=6, slices_per_study=8, seed=12)
    examples = tf.data.Dataset.from_tensor_slices((images, labels))
    recipe, steps = MEMBERS["a"], 40
    model = compile_member(build_cascade("tiny", seed=recipe.seed), recipe, total_steps=steps)
    before = model.evaluate(images, labels, batch_size=16, verbose=0, return_dict=True)["loss"]
    model.fit(training_batches(examples, recipe, labels.mean(axis=0), batch_size=16), steps_per_epoch=steps,
              epochs=1, verbose=0)
    after = model.evaluate(images, labels, batch_size=16, verbose=0, return_dict=True)["loss"]
    assert labels[:, LABELS.index("any")].mean() > 0.1
    assert after < 0.75 * before, (before, after)


def test_every_member_trains_on_sklearn_log_loss_and_its_eval_macro_auc_ranks_rare_subtypes_as_sklearn_does():
    """Rare-subtype probabilities sit far below 0.01; the checkpoint metric must still rank them."""
    from sklearn.metrics import log_loss, roc_auc_score

    rng = np.random.default_rng(3)
    labels = (rng.random((400, NUM_LABELS)) < 0.1).astype(np.float32)
    logits = rng.normal(-7.0, 1.0, labels.shape) + 1.5 * labels  # all probabilities around 0.001
    probabilities = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    expected = np.mean([roc_auc_score(labels[:, k], probabilities[:, k]) for k in range(NUM_LABELS)])
    for recipe in MEMBERS.values():
        model = compile_member(
            tf.keras.Sequential([tf.keras.layers.Lambda(lambda x: x, input_shape=(NUM_LABELS,))]), recipe,
            total_steps=10)
        measured = model.evaluate(probabilities, labels, batch_size=400, verbose=0, return_dict=True)
        assert measured["macro_auc"] == pytest.approx(expected, abs=0.01)
        assert measured["loss"] == pytest.approx(log_loss(labels.ravel(), probabilities.ravel()), rel=1e-4)
        assert measured[CHECKPOINT_METRIC] == pytest.approx(weighted_log_loss(labels, probabilities), rel=1e-4)


def test_the_checkpoint_metric_scores_a_member_as_it_will_be_exported(tmp_path):
    """Trained on balanced batches, a member predicts their prevalence; the Trainer judges its checkpoints by
    the weighted log loss on the eval split of the output after correct_label_prior, which is what is exported."""
    images, labels = synthetic_images(tmp_path, patients=2, slices_per_study=4, seed=5)
    balanced = np.array([0.12, 0.2, 0.15, 0.1, 0.2, 0.55])  # project order, `any` last
    data = np.array([0.01, 0.06, 0.03, 0.02, 0.05, 0.14])
    model = compile_member(build_cascade("tiny", prior=balanced, seed=4), MEMBERS["c"], total_steps=10,
                           trained_on=balanced, actual=data)
    measured = model.evaluate(images, labels, batch_size=4, verbose=0, return_dict=True)[CHECKPOINT_METRIC]
    as_trained = model.predict(images, batch_size=4, verbose=0).astype(np.float64)
    correct_label_prior(model, trained_on=balanced, actual=data)
    exported = model.predict(images, batch_size=4, verbose=0).astype(np.float64)
    assert measured == pytest.approx(weighted_log_loss(labels, exported), rel=1e-4)
    assert abs(measured - weighted_log_loss(labels, as_trained)) > 0.05


@pytest.mark.parametrize(("losses", "standard_errors", "kept"), [
    ([0.30, 0.20, 0.21, 0.25], [0.01, 0.02, 0.02, 0.02], 2),  # 0.21 is within 0.20 + 0.02; 0.25 is not
    ([0.30, 0.20, 0.19], [0.01, 0.02, 0.02], 2),  # a new lowest
    ([0.20, 0.30], [0.01, 0.01], 0),  # a rise of more than the noise: overfitting
    ([float("nan"), 0.20, 0.205], [float("nan"), 0.01, 0.01], 2),
    ([float("nan"), float("nan")], [float("nan"), float("nan")], None),
])
def test_the_kept_evaluation_is_the_latest_within_one_standard_error_of_the_lowest(losses, standard_errors, kept):
    assert kept_evaluation(losses, standard_errors) == kept


def test_the_checkpoint_callback_leaves_the_kept_evaluations_weights(tmp_path):
    """A real fit with validation: the saved weights are those of the evaluation kept_evaluation picks from the
    logged figures."""
    rng = np.random.default_rng(5)
    features = rng.normal(size=(256, 8)).astype(np.float32)
    labels = (features[:, :NUM_LABELS] + rng.normal(size=(256, NUM_LABELS)) > 1.0).astype(np.float32)
    model = compile_member(tf.keras.Sequential([tf.keras.layers.Dense(NUM_LABELS, activation="sigmoid",
                                                                      input_shape=(8,))]),
                           MEMBERS["a"], total_steps=60)
    snapshots = []
    keeper = KeepWithinOneStandardError(str(tmp_path / "kept.weights.h5"))
    history = model.fit(features[:192], labels[:192], batch_size=32, epochs=10, verbose=0,
                        validation_data=(features[192:], labels[192:]),
                        callbacks=[keeper, tf.keras.callbacks.LambdaCallback(
                            on_epoch_end=lambda epoch, logs: snapshots.append(model.get_weights()))])
    expected = kept_evaluation(history.history[f"val_{CHECKPOINT_METRIC}"],
                               history.history[f"val_{CHECKPOINT_METRIC_SE}"])
    assert keeper.kept == expected
    assert all(se > 0 for se in history.history[f"val_{CHECKPOINT_METRIC_SE}"])
    model.load_weights(str(tmp_path / "kept.weights.h5"))
    for kept, snapshot in zip(model.get_weights(), snapshots[expected], strict=True):
        np.testing.assert_array_equal(kept, snapshot)


def test_the_scanner_intensity_setting_switches_only_the_intensity_of_a_recipe():
    from ich_model.settings import TrainerSettings

    recipe = MEMBERS["b"]
    for on in (True, False):
        changed = TrainerSettings.from_custom_config({"member": "b", "scanner_intensity": on}).recipe
        assert changed.augmentation.has_intensity is on
        assert (changed.augmentation.rotation_deg, changed.augmentation.zoom, changed.seed) == (
            recipe.augmentation.rotation_deg, recipe.augmentation.zoom, recipe.seed)
    assert TrainerSettings(member="b").recipe == recipe
