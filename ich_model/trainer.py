"""The Trainer's `run_fn` (`ich_model.trainer.run_fn`): trains one member of the cascade ensemble.

Reads the raw Examples, applies the saved transform graph in the input pipeline (the Transform component does not
materialise images; see ich_model/preprocessing.py), samples and augments as the member's recipe says, keeps the
weights of the latest evaluation within one standard error of the lowest eval weighted log loss of the output as
exported (members.kept_evaluation), writes TensorBoard logs and exports a ScoringModule SavedModel with its
description. The balanced batches show the member more positives than the data holds, so before export its
output is moved from the batches' prevalence back to the data's (`correct_label_prior`): exported probabilities
are calibrated to the data, not to the sampler.

The settings come in `custom_config` as a `TrainerSettings` (ich_model/settings.py). With a base model (the
latest blessed model: a study model or an ensemble), the member starts from the weights of its namesake there,
matched by name, and trains for `warm_start_steps` on a schedule of that length; when the base member's
description names another network, or it has none, the member starts from scratch and trains for `train_steps`.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from tfx_bsl.public import tfxio

from ich_model.constants import NUM_LABELS, SUBTYPES
from ich_model.description import (
    DescriptionError,
    assign_by_name,
    member_description,
    member_entry,
    network_of,
    read_description,
    rebuild_member,
)
from ich_model.examples import LABEL, positives_pattern
from ich_model.members import (
    BATCH_SIZE,
    CHECKPOINT_METRIC,
    KeepWithinOneStandardError,
    compile_member,
    sampled_prevalence,
    training_batches,
)
from ich_model.model.network import NetworkSpec, build_network, correct_label_prior, describe
from ich_model.model.presets import network_spec
from ich_model.precision import FLOAT32, precision_policy
from ich_model.preprocessing import IMAGE
from ich_model.serving import ScoringModule
from ich_model.settings import TrainerSettings

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


def positive_examples(file_patterns: list[str], data_accessor, tft_output: tft.TFTransformOutput,
                      cooccurrence: np.ndarray) -> dict[int, tf.data.Dataset] | None:
    """Each subtype's train positives as raw_examples pairs, read from the ExampleGen's positive folders, for the
    subtypes that have any; None (the sampler then filters the split) when an Examples artifact has no such
    folders, as those written before they existed. A folder whose count disagrees with the split's labels is an
    error: the sampler's prevalence (sampled_prevalence) is computed from the split."""
    patterns = {subtype: [positives_pattern(p, subtype) for p in file_patterns] for subtype in SUBTYPES}
    folders = sorted({os.path.dirname(os.path.dirname(p)) for group in patterns.values() for p in group})
    missing = [folder for folder in folders if not tf.io.gfile.isdir(folder)]
    if missing:
        logging.warning("no positive folders in %s (Examples written before they existed): each subtype's stream "
                        "filters the whole train split, reading about 1/prevalence Examples per draw", missing)
        return None
    counts = {subtype: label_counts(group)[0] for subtype, group in patterns.items()}
    for index, subtype in enumerate(SUBTYPES):
        if counts[subtype] != int(cooccurrence[index, index]):
            raise ValueError(f"{counts[subtype]} Examples in the {subtype} positive folders {patterns[subtype]}, but "
                             f"the train split holds {int(cooccurrence[index, index])} {subtype} positives: the "
                             f"Examples artifact is incomplete; ingest the span again")
    logging.info("balanced sampler: each subtype's positives from its own folder (%s)",
                 ", ".join(f"{subtype} {count}" for subtype, count in counts.items()))
    return {index: raw_examples(patterns[subtype], data_accessor, tft_output)
            for index, subtype in enumerate(SUBTYPES) if counts[subtype]}


def warm_start(model: tf.keras.Model, spec: NetworkSpec, base_model_dir: str, member_name: str) -> np.ndarray:
    """Copy member `member_name` of the export at `base_model_dir` into `model` (built from `spec`), variable by
    variable name. Returns the label prevalence that the base member's output was moved to before its export.
    A DescriptionError, with `model` untouched, when the base has no description, no such member, or describes
    another network."""
    _, entry = member_entry(read_description(base_model_dir), member_name, base_model_dir)
    base_network = network_of(entry, base_model_dir)
    if (base_network.architecture, _families(base_network)) != (spec.architecture, _families(spec)):
        raise DescriptionError(
            f"the base model's member {member_name} is a {base_network.architecture} network of "
            f"{' + '.join(_families(base_network))}; this run trains a {spec.architecture} network of "
            f"{' + '.join(_families(spec))}")
    moved_to = np.asarray(entry["prevalence"]["moved_to"], np.float64)
    # The same families at other sizes fail here, naming the variables that differ; settings that create no
    # variable (drop-path rate, dropout) may differ.
    source = rebuild_member(base_model_dir, member_name)
    assign_by_name(model, source.variables, f"member {member_name} of {base_model_dir}")
    differences = _differences(entry["network"], spec.get_config())
    if differences:
        logging.info("member %s: warm start across network settings %s", member_name,
                     "; ".join(f"{path}: base {theirs}, this run {ours}" for path, theirs, ours in differences))
    return moved_to


def _families(spec: NetworkSpec) -> tuple[str, ...]:
    return tuple(part.family for part in (spec.front, spec.back) if part is not None)


def _differences(theirs, ours, path: str = "network") -> list[tuple[str, object, object]]:
    """Where two network configs differ: (dotted path, their value, our value)."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        return [difference for key in sorted(set(theirs) | set(ours))
                for difference in _differences(theirs.get(key), ours.get(key), f"{path}.{key}")]
    return [] if theirs == ours else [(path, theirs, ours)]


def in_float32(model: tf.keras.Model, spec: NetworkSpec) -> tf.keras.Model:
    """`model`, trained under a mixed-precision policy, rebuilt under float32 with the same (float32) weights."""
    with precision_policy(FLOAT32):
        rebuilt = build_network(spec, name=model.name)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _strategy() -> tf.distribute.Strategy:
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        logging.info("training on %d GPUs with MirroredStrategy", len(gpus))
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def run_fn(fn_args) -> None:
    settings = TrainerSettings.from_custom_config(fn_args.custom_config)
    for name, proto, tfx_steps in (("train_steps", "TrainArgs", fn_args.train_steps),
                                   ("eval_steps", "EvalArgs", fn_args.eval_steps)):
        if tfx_steps is not None and int(tfx_steps) != getattr(settings, name):
            raise ValueError(f"the Trainer's settings say {name} {getattr(settings, name)}, its {proto} "
                             f"{int(tfx_steps)}: build member Trainers with pipeline.training.member_trainers, "
                             f"which derives both from one TrainerSettings")
    recipe = settings.recipe
    spec = network_spec(settings.architecture, settings.preset)
    batch_size, seed = settings.batch_size, settings.initialisation_seed
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
    validation_steps = min(settings.eval_steps, max(1, -(-eval_count // batch_size)))
    logging.info("member %s (%s %s): label prevalence %s, in balanced batches %s", recipe.name,
                 settings.preset, spec.architecture, np.round(prevalence, 4), np.round(sampled, 4))
    tft_layer = tft_output.transform_features_layer()

    def to_images(raw_batch):
        return tft_layer(raw_batch)[IMAGE]

    train_raw = raw_examples(fn_args.train_files, fn_args.data_accessor, tft_output)
    positives = positive_examples(fn_args.train_files, fn_args.data_accessor, tft_output, cooccurrence)
    if settings.cache_examples:  # small sets: keep the raw Examples in memory between epochs
        train_raw = train_raw.cache()
        if positives is not None:
            positives = {index: stream.cache() for index, stream in positives.items()}
    train = training_batches(train_raw, recipe, prevalence, batch_size, seed=seed, to_images=to_images,
                             positives=positives)
    evaluation = (raw_examples(fn_args.eval_files, fn_args.data_accessor, tft_output)
                  .batch(batch_size).take(validation_steps).map(lambda raw, labels: (to_images(raw), labels)))
    if settings.cache_examples:
        evaluation = evaluation.cache()  # the same batches every time: validation reads exactly these

    with precision_policy(settings.precision) as policy:
        train_steps, warm_started = settings.train_steps, False
        with _strategy().scope():
            model = build_network(spec, prior=sampled, seed=seed, name=f"member_{recipe.name}")
            if fn_args.base_model:
                try:
                    base_prevalence = warm_start(model, spec, fn_args.base_model, recipe.name)
                except DescriptionError as reason:
                    logging.warning("member %s: training from scratch, not from %s: %s", recipe.name,
                                    fn_args.base_model, reason)
                else:
                    # The base member's output was moved to the prevalence of its own data; training resumes on
                    # balanced batches.
                    correct_label_prior(model, trained_on=base_prevalence, actual=sampled)
                    train_steps, warm_started = settings.steps_from_base, True
            logging.info("member %s: %s, %d steps", recipe.name,
                         f"warm start from {fn_args.base_model}" if warm_started else "from scratch", train_steps)
            compile_member(model, recipe, train_steps, trained_on=sampled, actual=prevalence, batch_size=batch_size)
        logging.info(describe(model))
        eval_every = settings.evaluation_interval(train_steps)
        epochs = max(1, train_steps // eval_every)
        kept_weights = os.path.join(fn_args.model_run_dir, KEPT_WEIGHTS)
        keeper = KeepWithinOneStandardError(kept_weights)
        model.fit(
            train, steps_per_epoch=eval_every, epochs=epochs,
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
    if policy != FLOAT32:  # served in float32, whatever it trained in
        model = in_float32(model, spec)
    correct_label_prior(model, trained_on=sampled, actual=prevalence)
    description = member_description(
        recipe.name, spec, model, recipe, trained_on=sampled, moved_to=prevalence, steps_run=eval_every * epochs,
        kept_at_step=None if keeper.kept is None else (keeper.kept + 1) * eval_every, warm_started=warm_started,
        settings=settings.as_custom_config())
    ScoringModule([model], [recipe.name], fn_args.transform_graph_path, description).save(
        fn_args.serving_model_dir)
