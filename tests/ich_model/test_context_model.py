"""The study-context model on series built here: a padded series scores as it does alone, an untrained model is the
slice ensemble and the max-over-slices rule, the loss counts real slices only (numpy's weighted log loss), the
records parse back to what was written, augmentation keeps gaps true to the positions, and training on series
whose labels need the neighbours beats the slice probabilities on new series."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ich_model import context
from ich_model.constants import NUM_LABELS
from ich_model.context_model import (
    GAPS,
    MASK,
    REFINED,
    STUDY,
    augment,
    build_context_model,
    context_loss,
    fit_context_model,
    parse_record,
    predict_studies,
)
from ich_model.metrics import weighted_log_loss
from tests.pipeline_helpers import randomised

EMBEDDING_SIZE = 8


def series_inputs(rng, length: int) -> dict[str, np.ndarray]:
    return {context.EMBEDDING: rng.normal(size=(length, EMBEDDING_SIZE)).astype(np.float32),
            context.PROBABILITIES: rng.uniform(0.02, 0.98, (length, NUM_LABELS)).astype(np.float32),
            context.SPREAD: rng.uniform(0, 0.2, (length, NUM_LABELS)).astype(np.float32),
            GAPS: np.full((length, 2), 0.5, np.float32), MASK: np.ones(length, bool)}


def padded(series: list[dict[str, np.ndarray]]) -> dict[str, tf.Tensor]:
    longest = max(len(s[MASK]) for s in series)
    batch = {}
    for name in series[0]:
        rows = [np.pad(s[name], [(0, longest - len(s[MASK]))] + [(0, 0)] * (s[name].ndim - 1)) for s in series]
        batch[name] = tf.constant(np.stack(rows))
    return batch


def test_a_padded_series_scores_exactly_as_the_same_series_alone():
    rng = np.random.default_rng(0)
    short, long_ = series_inputs(rng, 7), series_inputs(rng, 12)
    model = randomised(build_context_model(EMBEDDING_SIZE, units=16, seed=1), seed=2)
    alone = model(padded([short]), training=False)
    together = model(padded([long_, short]), training=False)
    assert not np.allclose(alone[REFINED][0].numpy(), short[context.PROBABILITIES], atol=1e-3)  # the GRUs act
    np.testing.assert_allclose(together[REFINED][1, :7].numpy(), alone[REFINED][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(together[STUDY][1].numpy(), alone[STUDY][0].numpy(), atol=1e-5)
    # Reversing a series changes what the GRUs see, not which slices count.
    flipped = {name: value[::-1].copy() for name, value in short.items()}
    assert model(padded([flipped]), training=False)[REFINED].shape == (1, 7, NUM_LABELS)


def test_an_untrained_model_is_the_slice_ensemble_and_the_max_rule():
    rng = np.random.default_rng(1)
    series = [series_inputs(rng, 5), series_inputs(rng, 9)]
    outputs = build_context_model(EMBEDDING_SIZE, units=16, seed=3)(padded(series), training=False)
    for row, inputs in enumerate(series):
        length = len(inputs[MASK])
        np.testing.assert_allclose(outputs[REFINED][row, :length].numpy(), inputs[context.PROBABILITIES], atol=1e-5)
        np.testing.assert_allclose(outputs[STUDY][row].numpy(), inputs[context.PROBABILITIES].max(axis=0), atol=1e-5)


def test_the_loss_counts_real_slices_only_as_numpy_s_weighted_log_loss():
    rng = np.random.default_rng(2)
    series = [series_inputs(rng, 4), series_inputs(rng, 10)]
    slice_labels = [(rng.random((len(s[MASK]), NUM_LABELS)) < 0.3).astype(np.float32) for s in series]
    study_labels = np.stack([labels.max(axis=0) for labels in slice_labels])
    batch = padded(series)
    labels = {REFINED: padded([{MASK: s[MASK], "y": y} for s, y in zip(series, slice_labels, strict=True)])["y"],
              STUDY: tf.constant(study_labels)}
    model = randomised(build_context_model(EMBEDDING_SIZE, units=8, seed=4), seed=5)
    outputs = model(batch, training=False)
    slice_loss, study_loss = context_loss(labels, outputs, batch[MASK])
    real = [outputs[REFINED][row, :len(s[MASK])].numpy() for row, s in enumerate(series)]
    assert float(slice_loss) == pytest.approx(weighted_log_loss(np.concatenate(slice_labels), np.concatenate(real)),
                                              rel=1e-4)
    assert float(study_loss) == pytest.approx(weighted_log_loss(study_labels, outputs[STUDY].numpy()), rel=1e-4)


def written_record(rng, length: int) -> tuple[tf.train.Example, context.OrderedSeries]:
    positions = np.cumsum(rng.uniform(4, 6, length))
    slices = [context.ScoredSlice(image_id=f"ID_{i}", position_mm=float(p),
                                  embedding=rng.normal(size=EMBEDDING_SIZE).astype(np.float32),
                                  probabilities=rng.uniform(size=NUM_LABELS).astype(np.float32),
                                  spread=rng.uniform(size=NUM_LABELS).astype(np.float32),
                                  label=(rng.random(NUM_LABELS) < 0.3).astype(np.int64))
              for i, p in enumerate(positions)]
    series = context.order_series(reversed(slices))
    return context.study_record("study", "series", "patient", 1, series), series


def test_a_record_parses_back_to_what_was_written():
    record, series = written_record(np.random.default_rng(3), 6)
    inputs, labels = parse_record(tf.constant(record.SerializeToString()))
    np.testing.assert_allclose(inputs[context.EMBEDDING].numpy(), np.stack([s.embedding for s in series.slices]))
    np.testing.assert_allclose(inputs[context.PROBABILITIES].numpy(),
                               np.stack([s.probabilities for s in series.slices]))
    before, after = series.gaps()
    np.testing.assert_allclose(inputs[GAPS].numpy(), np.stack([before, after], axis=-1) / 10.0, rtol=1e-6)
    np.testing.assert_array_equal(labels[REFINED].numpy(), np.stack([s.label for s in series.slices]))
    np.testing.assert_array_equal(labels[STUDY].numpy(), np.stack([s.label for s in series.slices]).max(axis=0))
    assert inputs[MASK].numpy().all() and len(inputs[MASK]) == 6


@pytest.mark.parametrize("length", [4, 5, 9])
def test_augmentation_keeps_the_gaps_true_to_the_slices_it_keeps(length):
    record, series = written_record(np.random.default_rng(length), length)
    inputs, labels = parse_record(tf.constant(record.SerializeToString()))
    positions = series.positions
    # Tag each slice with its position (in the embedding) to see which slices were kept, in which order.
    inputs[context.EMBEDDING] = tf.constant(np.repeat(positions[:, None], EMBEDDING_SIZE, 1).astype(np.float32))
    seen = set()
    for seed in range(24):
        out, out_labels = augment(inputs, labels, tf.constant([seed, 7], tf.int64))
        kept = out[context.EMBEDDING].numpy()[:, 0]
        order = [int(np.argmin(np.abs(positions - p))) for p in kept]
        reversed_, thinned = order[0] > order[-1], len(order) < length
        seen.add((reversed_, thinned))
        step = 2 if thinned else 1  # every other slice of the order as it came (reversed or not)
        assert len(order) == -(-length // step) and np.all(np.abs(np.diff(order)) == step)
        gaps = np.abs(np.diff(kept)) / 10.0
        np.testing.assert_allclose(out[GAPS].numpy()[:, 0], np.r_[0, gaps], atol=1e-5)
        np.testing.assert_allclose(out[GAPS].numpy()[:, 1], np.r_[gaps, 0], atol=1e-5)
        np.testing.assert_array_equal(out_labels[REFINED].numpy(), labels[REFINED].numpy()[order])
        np.testing.assert_array_equal(out_labels[STUDY].numpy(), labels[STUDY].numpy())
    assert seen == {(False, False), (True, False), (False, True), (True, True)}


def neighbour_series(rng, count: int) -> tuple[list[dict], list[np.ndarray]]:
    """Series where bleeding runs over neighbouring slices: the slice stage saw each slice alone, and its
    probabilities of bleeding and clean slices overlap (0.30-0.85 against 0.05-0.60), while a run of
    neighbours tells them apart."""
    series, labels = [], []
    for _ in range(count):
        length = int(rng.integers(8, 16))
        start, size = int(rng.integers(0, length)), int(rng.integers(2, 6))
        truth = np.zeros((length, NUM_LABELS), np.float32)
        if rng.random() < 0.6:
            truth[start:start + size] = 1.0
        noisy = 0.25 * truth + rng.uniform(0.05, 0.6, truth.shape)
        inputs = series_inputs(rng, length)
        inputs[context.PROBABILITIES] = noisy.astype(np.float32)
        series.append(inputs)
        labels.append(truth)
    return series, labels


def as_dataset(series, labels, batch_size: int, repeat: bool) -> tf.data.Dataset:
    def rows():
        for inputs, truth in zip(series, labels, strict=True):
            yield inputs, {REFINED: truth, STUDY: truth.max(axis=0)}

    signature = ({name: tf.TensorSpec([None, *value.shape[1:]], value.dtype) for name, value in series[0].items()},
                 {REFINED: tf.TensorSpec([None, NUM_LABELS], tf.float32), STUDY: tf.TensorSpec([NUM_LABELS],
                                                                                               tf.float32)})
    dataset = tf.data.Dataset.from_generator(rows, output_signature=signature)
    return (dataset.repeat() if repeat else dataset).padded_batch(batch_size)


def test_training_on_series_that_need_their_neighbours_beats_the_slice_probabilities():
    rng = np.random.default_rng(4)
    train, train_labels = neighbour_series(rng, 64)
    held_out, held_out_labels = neighbour_series(rng, 32)
    model = build_context_model(EMBEDDING_SIZE, units=16, seed=6)
    losses = fit_context_model(model, as_dataset(train, train_labels, 16, repeat=True), steps=150,
                               learning_rate=3e-3)
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    predictions = predict_studies(model, as_dataset(held_out, held_out_labels, 8, repeat=False))
    truth = np.concatenate(predictions.slice_labels)
    np.testing.assert_array_equal(truth, np.concatenate(held_out_labels))  # padding removed, order kept
    slice_only = np.concatenate([s[context.PROBABILITIES] for s in held_out])
    figures = predictions.figures()
    print(f"held-out weighted log loss: {figures}")
    assert figures["slice_only"] == pytest.approx(weighted_log_loss(truth, slice_only), rel=1e-5)
    assert figures["slice_refined"] < 0.85 * figures["slice_only"]
    max_rule = np.stack([s[context.PROBABILITIES].max(axis=0) for s in held_out])
    assert figures["study_max_rule"] == pytest.approx(weighted_log_loss(predictions.study_labels, max_rule),
                                                      rel=1e-5)
    assert figures["study_head"] < figures["study_max_rule"]
