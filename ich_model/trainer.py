"""The Trainer's `run_fn` (`ich_model.trainer.run_fn`): trains one member of the cascade ensemble.

Reads the raw Examples, applies the saved transform graph in the input pipeline (the Transform component does not
materialise images; see ich_model/preprocessing.py), samples and augments as the member's recipe says, keeps the
weights of the latest evaluation within one standard error of the lowest eval weighted log loss of the output as
exported (members.kept_evaluation), writes TensorBoard logs and exports a ScoringModule SavedModel. The
balanced batches show the member more positives than the data holds, so before export its output is moved from
the batches' prevalence back to the data's (`correct_label_prior`): exported probabilities are calibrated to the
data, not to the sampler.

custom_config keys: `member` ("a", "b" or "c"), `preset` ("tiny", "b0", "s"), `batch_size` (default 32),
`eval_every_steps` (default: a fifth of the training steps), `cache_examples` (default true: keep the raw
Examples in memory between epochs; set false for sets larger than memory), `warm_start_steps` (default: the
training steps), `architecture` (default "cascade"; "efficientnet_only" and "convnext_only" are the ablation's
single-family networks, for bench/quality.py), `seed` (default: the member's recipe seed; sets the weights'
initialisation and the sampler's order, for repeating a training over seeds).

With a base model (the latest blessed ensemble), the member starts from the weights of its namesake in that
ensemble and trains for `warm_start_steps` on a schedule of that length; without one, or when the base member is
a different architecture, it starts from scratch and trains for the full `train_steps`.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from ich_model.constants import NUM_LABELS
from ich_model.examples import LABEL
from ich_model.members import (
    BATCH_SIZE,
    CHECKPOINT_METRIC,
    MEMBERS,
    KeepWithinOneStandardError,
    compile_member,
    sampled_prevalence,
    training_batches,
)
from ich_model.model.ablation import build_architecture
from ich_model.model.cascade import correct_label_prior, describe
from ich_model.preprocessing import IMAGE
from ich_model.serving import ScoringModule, member_weights

KEPT_WEIGHTS = "kept.weights.h5"


def label_counts(file_patterns: list[str]) -> tuple[int, np.ndarray]:
    """The number of Examples and the label co-occurrence counts ([i, j]: positive for both labels i and j; the
    diagonal is the positives per label), from the label feature alone (no pixels decoded)."""
    files = [f for pattern in file_patterns for f in tf.io.gfile.glob(pattern)]
    spec = {LABEL: tf.io.FixedLenFeature([NUM_LABELS], tf.int64)}
    labels = (tf.data.TFRecordDataset(files, compression_type="GZIP")
              .batch(256).map(lambda records: tf.io.parse_example(records, spec)[LABEL]))
    cooccurrence, count = np.zeros((NUM_LABELS, NUM_LABELS)), 0
    for batch in labels:
        values = batch.numpy().astype(np.float64)
        cooccurrence += values.T @ values
        count += int(batch.shape[0])
    return count, cooccurrence


def raw_examples(file_patterns: list[str], data_accessor, tft_output: tft.TFTransformOutput) -> tf.data.Dataset:
    """Unbatched (raw features, label) pairs: sampling filters on labels before any pixel is transformed."""
    raw = data_accessor.tf_dataset_factory(
        file_patterns, tfxio.TensorFlowDatasetOptions(batch_size=BATCH_SIZE, num_epochs=1, shuffle=False),
        tft_output.raw_metadata.schema)
    return raw.unbatch().map(lambda features: (features, tf.cast(tf.reshape(features[LABEL], [NUM_LABELS]),
                                                                 tf.float32)))


def warm_start(model: tf.keras.Model, base_model_dir: str, member_name: str) -> bool:
    """Copy member `member_name` of the ensemble exported at `base_model_dir` into `model`. False, with the
    reason logged, when that member is a different architecture (e.g. the ensemble was trained with another
    preset): then `model` keeps its fresh initialisation."""
    source = member_weights(base_model_dir, member_name)
    targets = model.variables
    if len(source) != len(targets) or any(s.shape != t.shape for s, t in zip(source, targets, strict=True)):
        logging.warning("member %s: the base model's member has %d variables, this architecture %d (or their "
                        "shapes differ); training from scratch", member_name, len(source), len(targets))
        return False
    for target, value in zip(targets, source, strict=True):
        target.assign(value)
    return True


def _strategy() -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        logging.info("training on %d GPUs with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def run_fn(fn_args) -> None:
    config = fn_args.custom_config or {}
    recipe = MEMBERS[config.get("member", "a")]
    preset = config.get("preset", "tiny")
    batch_size = int(config.get("batch_size", BATCH_SIZE))
    seed = int(config.get("seed", recipe.seed))
    tft_output = tft.TFTransformOutput(fn_args.transform_graph_path)

    train_count, cooccurrence = label_counts(fn_args.train_files)
    if train_count == 0:
        raise ValueError(f"no training examples in {fn_args.train_files}")
    prevalence = np.diag(cooccurrence) / train_count
    # Balanced batches hold more positives than the data: the member learns that prevalence, and its output is
    # moved back to the data's own before export.
    sampled = sampled_prevalence(cooccurrence, train_count, recipe.hard_subtypes)
    # Validate on at most the whole eval split: Keras stops validating for good once a finite set runs out.
    eval_count, _ = label_counts(fn_args.eval_files)
    validation_steps = min(int(fn_args.eval_steps), max(1, -(-eval_count // batch_size)))
    logging.info("member %s (%s preset): label prevalence %s, in balanced batches %s", recipe.name, preset,
                 np.round(prevalence, 4), np.round(sampled, 4))
    tft_layer = tft_output.transform_features_layer()

    def to_images(raw_batch):
        return tft_layer(raw_batch)[IMAGE]

    train_raw = raw_examples(fn_args.train_files, fn_args.data_accessor, tft_output)
    if config.get("cache_examples", True):  # small sets: keep the raw Examples in memory between epochs
        train_raw = train_raw.cache()
    train = training_batches(train_raw, recipe, prevalence, batch_size, seed=seed, to_images=to_images)
    evaluation = (raw_examples(fn_args.eval_files, fn_args.data_accessor, tft_output)
                  .batch(batch_size).take(validation_steps).map(lambda raw, labels: (to_images(raw), labels)))
    if config.get("cache_examples", True):
        evaluation = evaluation.cache()  # the same batches every time: validation reads exactly these

    train_steps = int(fn_args.train_steps)
    with _strategy().scope():
        model = build_architecture(config.get("architecture", "cascade"), preset, prior=sampled, seed=seed,
                                   name=f"member_{recipe.name}")
        if fn_args.base_model and warm_start(model, fn_args.base_model, recipe.name):
            # The base member was exported at the data's prevalence; training resumes on balanced batches.
            correct_label_prior(model, trained_on=prevalence, actual=sampled)
            train_steps = int(config.get("warm_start_steps") or train_steps)
            logging.info("member %s: warm start from %s, %d steps", recipe.name, fn_args.base_model, train_steps)
        else:
            logging.info("member %s: from scratch, %d steps", recipe.name, train_steps)
        compile_member(model, recipe, train_steps, trained_on=sampled, actual=prevalence)
    logging.info(describe(model))
    eval_every = min(train_steps, int(config.get("eval_every_steps") or max(1, train_steps // 5)))
    kept_weights = os.path.join(fn_args.model_run_dir, KEPT_WEIGHTS)
    keeper = KeepWithinOneStandardError(kept_weights)
    model.fit(
        train, steps_per_epoch=eval_every, epochs=max(1, train_steps // eval_every),
        validation_data=evaluation, validation_steps=validation_steps,
        callbacks=[
            keeper,
            tf.keras.callbacks.TensorBoard(log_dir=os.path.join(fn_args.model_run_dir, "logs")),
        ],
        verbose=2,
    )
    if keeper.kept is not None:
        logging.info("member %s: keeping evaluation %d of %d (eval %s %s, standard errors %s)", recipe.name,
                     keeper.kept + 1, len(keeper.losses), CHECKPOINT_METRIC, np.round(keeper.losses, 4),
                     np.round(keeper.standard_errors, 4))
        model.load_weights(kept_weights)
    else:  # the eval metric was never finite: keep the last weights
        logging.warning("no kept checkpoint (the eval %s was never finite); exporting the last weights",
                        CHECKPOINT_METRIC)
    correct_label_prior(model, trained_on=sampled, actual=prevalence)
    ScoringModule([model], [recipe.name], fn_args.transform_graph_path).save(fn_args.serving_model_dir)
