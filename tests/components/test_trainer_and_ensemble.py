"""Exported members and ensemble: raw tf.Examples in, numpy-checked mean, spread and embeddings out, the same
after a reload from disk; each export's description, the Keras members rebuilt from it, warm start by variable
name, Grad-CAM on every architecture, the clear error for an export without a description; the ensemble's OOD
score against an independent numpy Mahalanobis fit on its own train split embeddings; and one member trained by
the real TFX Trainer executor with run_fn, checked against the labels it was trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tfx.components.trainer.executor import GenericExecutor
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import path_utils, proto_utils

from components.dicom_example_gen import DicomExampleGen
from ich_model.constants import ANY, LABELS, NUM_LABELS
from ich_model.description import (
    DESCRIPTION_VERSION,
    DescriptionError,
    description_path,
    read_description,
    rebuild_member,
    rebuild_members,
)
from ich_model.explain import GradCam
from ich_model.members import sampled_prevalence
from ich_model.model.network import build_network, feature_tap, tap_layer
from ich_model.model.presets import ARCHITECTURES, PRESETS, build_cascade, network_spec
from ich_model.ood import IN_DISTRIBUTION_FLAG_SHARE, SHRINKAGE
from ich_model.preprocessing import preprocess_dicom
from ich_model.serving import (
    EMBEDDING,
    MEMBER_PROBABILITIES,
    OOD_SCORE,
    OUT_OF_DISTRIBUTION,
    PROBABILITIES,
    SERVING_SIGNATURE,
    SPREAD,
    ScoringModule,
    member_output,
)
from ich_model.synth import IMAGES_DIR, generate_dataset
from ich_model.trainer import warm_start
from tests.pipeline_helpers import (
    export_ensemble,
    read_split,
    run_example_gen,
    run_transform,
    untrained_member_description,
)


@pytest.fixture(scope="module")
def pipeline_inputs(tmp_path_factory):
    """Ingested Examples and their transform graph, from a small synthetic set."""
    root = tmp_path_factory.mktemp("serving")
    generate_dataset(root / "rsna", patients=8, slices_per_study=4, seed=13, size=96, positive_fraction=1.0,
                     progress=False)
    examples = run_example_gen(DicomExampleGen(str(root / "rsna"), train_share=0.5), root / "examples")
    run_transform(root / "examples", root / "transform", root / "tft-tmp")
    return root, examples


@pytest.fixture(scope="module")
def exported(pipeline_inputs, tmp_path_factory):
    """`exported(architecture)`: untrained tiny members a, b, c (seeds 1, 2, 3) and the Ensemble's export of
    them, made once per module for each architecture (an export takes most of a test's time); a test that
    changes an export works on a copy."""
    root, _ = pipeline_inputs
    made = {}

    def export(architecture: str = "cascade") -> tuple[list[tf.keras.Model], str]:
        if architecture not in made:
            spec = network_spec(architecture, "tiny")
            members = [build_network(spec, seed=seed, name=f"member_{name}")
                       for seed, name in zip((1, 2, 3), "abc", strict=True)]
            made[architecture] = members, export_ensemble(root / "transform", members,
                                                          tmp_path_factory.mktemp(architecture), spec)
        return made[architecture]

    return export


def eval_batch(root: Path):
    examples = read_split(root / "examples", "eval")
    ids = [e.features.feature["image_id"].bytes_list.value[0].decode() for e in examples]
    images = np.stack([preprocess_dicom(root / "rsna" / IMAGES_DIR / f"{i}.dcm") for i in ids])
    return tf.constant([e.SerializeToString() for e in examples]), images


def pooled_features(model: tf.keras.Model, images) -> np.ndarray:
    """numpy's mean over the positions of the network's stride-32 features: what `embedding` should hold."""
    features = tf.keras.Model(model.input, tap_layer(model, feature_tap(32)).output)(images, training=False)
    return features.numpy().mean(axis=(1, 2))


def test_ensemble_reports_numpy_mean_spread_and_embeddings_and_survives_a_reload(pipeline_inputs, exported):
    root, _ = pipeline_inputs
    serialized, images = eval_batch(root)
    members, ensemble_dir = exported()
    expected = np.stack([m(images, training=False).numpy() for m in members], axis=1)  # [B, 3, 6]

    served = tf.saved_model.load(ensemble_dir).signatures[SERVING_SIGNATURE](examples=serialized)
    np.testing.assert_allclose(served[MEMBER_PROBABILITIES].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(served[PROBABILITIES].numpy(), expected.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(served[SPREAD].numpy(), expected.std(axis=1), atol=1e-5)
    for index, name in enumerate("abc"):
        np.testing.assert_allclose(served[member_output(name)].numpy(), expected[:, index], atol=1e-5)
    assert served[PROBABILITIES].shape == (len(images), 6)
    embeddings = np.stack([pooled_features(m, images) for m in members], axis=1)  # [B, 3, D]
    assert served[EMBEDDING].shape == (len(images), 3, PRESETS["tiny"].back.widths[-1])
    np.testing.assert_allclose(served[EMBEDDING].numpy(), embeddings, atol=1e-4)


def test_the_ensemble_describes_itself_and_its_members_rebuild_to_its_outputs(pipeline_inputs, exported):
    root, _ = pipeline_inputs
    serialized, images = eval_batch(root)
    _, ensemble_dir = exported()

    description = read_description(ensemble_dir)
    assert description["version"] == DESCRIPTION_VERSION and description["kind"] == "ensemble"
    assert description["labels"] == list(LABELS) and description["input"]["size"] == 256
    assert [c["window"] for c in description["input"]["channels"]] == ["blood", "brain", "bone"]
    assert description["input"]["channels"][0] == {"window": "blood", "level": 75.0, "width": 215.0}
    assert sorted(description["members"]) == ["a", "b", "c"]
    assert description["members"]["c"]["recipe"]["hard_subtypes"] == ["subarachnoid", "epidural"]
    assert description["outputs"][EMBEDDING] == ["B", 3, PRESETS["tiny"].back.widths[-1]]
    assert description["member_order"] == ["a", "b", "c"]

    served = tf.saved_model.load(ensemble_dir).signatures[SERVING_SIGNATURE](examples=serialized)
    rebuilt = rebuild_members(ensemble_dir)
    assert list(rebuilt) == ["a", "b", "c"]
    for index, model in enumerate(rebuilt.values()):
        np.testing.assert_allclose(model(images, training=False).numpy(),
                                   served[MEMBER_PROBABILITIES].numpy()[:, index], atol=1e-5)


def served_split(serve, root: Path, split: str) -> tuple[dict, np.ndarray]:
    """The served outputs (numpy) on one split's raw Examples, and their `any` labels."""
    examples = read_split(root / "examples", split)
    outputs = serve(examples=tf.constant([e.SerializeToString() for e in examples]))
    labels = np.array([e.features.feature["label"].int64_list.value[LABELS.index(ANY)] for e in examples])
    return {name: value.numpy() for name, value in outputs.items()}, labels


def numpy_mahalanobis_scores(train: np.ndarray, any_labels: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """Lee et al.'s score, written out: per member, class means of `any`, the tied covariance shrunk towards its
    diagonal, inverted; the minimum over classes of the squared distance, averaged over members."""
    per_member = []
    for member in range(train.shape[1]):
        x = train[:, member].astype(np.float64)
        means = {c: x[any_labels == c].mean(axis=0) for c in np.unique(any_labels)}
        covariance = np.cov(x - np.stack([means[c] for c in any_labels]), rowvar=False, bias=True)
        precision = np.linalg.inv((1 - SHRINKAGE) * covariance + SHRINKAGE * np.diag(np.diag(covariance)))
        distances = [np.einsum("nd,de,ne->n", scored[:, member] - mean, precision, scored[:, member] - mean)
                     for mean in means.values()]
        per_member.append(np.min(distances, axis=0))
    return np.mean(per_member, axis=0)


def test_the_shipped_ood_score_is_numpy_mahalanobis_on_the_train_split_embeddings(pipeline_inputs, exported):
    root, _ = pipeline_inputs
    _, ensemble_dir = exported()
    loaded = tf.saved_model.load(ensemble_dir)
    serve = loaded.signatures[SERVING_SIGNATURE]
    train, train_labels = served_split(serve, root, "train")
    held_out, _ = served_split(serve, root, "eval")

    expected = numpy_mahalanobis_scores(train[EMBEDDING], train_labels, held_out[EMBEDDING])
    np.testing.assert_allclose(held_out[OOD_SCORE], expected, rtol=1e-3)
    assert held_out[OOD_SCORE].shape == (len(expected),) and held_out[OOD_SCORE].dtype == np.float32

    ood = read_description(ensemble_dir)["ood"]
    assert ood["method"] == "mahalanobis_class_conditional" and ood["shrinkage"] == SHRINKAGE
    assert float(loaded.ood_threshold.numpy()) == ood["threshold"]
    assert ood["fitted_on"]["slices"] == len(train_labels)
    assert ood["fitted_on"]["per_class"] == {str(c): int(np.sum(train_labels == c)) for c in np.unique(train_labels)}
    # The threshold flags at most the in-distribution share of the eval split, and the description says how many.
    flagged = held_out[OUT_OF_DISTRIBUTION]
    assert set(np.unique(flagged)) <= {0.0, 1.0} and flagged.mean() <= IN_DISTRIBUTION_FLAG_SHARE
    np.testing.assert_array_equal(flagged, (held_out[OOD_SCORE] > ood["threshold"]).astype(np.float32))
    assert (ood["eval_slices"], ood["flagged_share_eval"]) == (len(flagged), flagged.mean())
    counts, edges = np.histogram(held_out[OOD_SCORE], bins=len(ood["eval_histogram"]["counts"]))
    assert ood["eval_histogram"]["counts"] == counts.tolist()
    np.testing.assert_allclose(ood["eval_histogram"]["edges"], edges, rtol=1e-4)
    assert read_description(ensemble_dir)["outputs"].keys() == held_out.keys()
    # Slices far from every training slice (all pixels saturated: a bone-white image) are flagged.
    images = tf.ones([2, 256, 256, 3])
    far = loaded.member_outputs_from_images(images)[EMBEDDING].numpy()
    assert numpy_mahalanobis_scores(train[EMBEDDING], train_labels, far).min() > ood["threshold"]


def test_a_member_warm_starts_from_its_namesake_by_variable_name(pipeline_inputs, exported):
    root, _ = pipeline_inputs
    _, images = eval_batch(root)
    members, ensemble_dir = exported()

    fresh = build_cascade("tiny", seed=99)
    assert not np.allclose(fresh(images, training=False).numpy(), members[1](images, training=False).numpy())
    prevalence = warm_start(fresh, PRESETS["tiny"], ensemble_dir, "b")
    np.testing.assert_allclose(prevalence, np.full(NUM_LABELS, 0.5))  # what the base member was moved to
    np.testing.assert_allclose(fresh(images, training=False).numpy(), members[1](images, training=False).numpy(),
                               atol=1e-6)
    with pytest.raises(DescriptionError, match="no member 'no_such_member'"):
        warm_start(fresh, PRESETS["tiny"], ensemble_dir, "no_such_member")


def test_warm_start_and_rebuild_match_variables_by_name_whatever_their_order(pipeline_inputs, tmp_path):
    """An export whose variables are stored in another order (reversed, here) still fits by name; matching by
    position would pair a kernel with a bias."""
    root, _ = pipeline_inputs
    _, images = eval_batch(root)
    member = build_cascade("tiny", seed=7)
    module = ScoringModule([member], ["a"], str(root / "transform"), untrained_member_description("a", member))
    module.member_variables = list(reversed(member.variables))
    module.save(str(tmp_path / "reordered"))
    expected = member(images, training=False).numpy()

    np.testing.assert_allclose(rebuild_member(tmp_path / "reordered")(images, training=False).numpy(), expected,
                               atol=1e-5)
    fresh = build_cascade("tiny", seed=8)
    warm_start(fresh, PRESETS["tiny"], str(tmp_path / "reordered"), "a")
    np.testing.assert_allclose(fresh(images, training=False).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("architecture, preset, reason", [
    ("cascade", "b0", "does not fit network: missing .+; other shapes .+"),  # same families, other sizes
    ("efficientnet_only", "tiny", "is a cascade network of efficientnet \\+ convnext; this run trains a "
                                  "efficientnet_only network of efficientnet"),
])
def test_warm_start_refuses_another_network_with_the_reason(exported, architecture, preset, reason):
    _, ensemble_dir = exported()
    spec = network_spec(architecture, preset)
    other = build_network(spec, seed=99)
    before = [v.numpy() for v in other.variables]
    with pytest.raises(DescriptionError, match=reason):
        warm_start(other, spec, ensemble_dir, "b")
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, other.variables, strict=True))


def test_an_export_without_a_description_is_a_clear_error(exported, tmp_path):
    ensemble_dir = shutil.copytree(exported()[1], tmp_path / "ensemble")
    Path(description_path(ensemble_dir)).unlink()
    message = "has no model description \\(assets/model_description.json\\)"
    with pytest.raises(DescriptionError, match=message):
        rebuild_members(ensemble_dir)
    with pytest.raises(DescriptionError, match=message):
        warm_start(build_cascade("tiny"), PRESETS["tiny"], ensemble_dir, "a")


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_grad_cam_reads_the_declared_tap_of_every_architecture(pipeline_inputs, exported, architecture):
    """The members rebuilt from an export of any architecture give the heat maps of the networks exported."""
    root, _ = pipeline_inputs
    _, images = eval_batch(root)
    members, ensemble_dir = exported(architecture)

    heat = GradCam(rebuild_members(ensemble_dir)).heatmaps(images[:4], LABELS.index("any"))
    expected = GradCam(dict(zip("abc", members, strict=True))).heatmaps(images[:4], LABELS.index("any"))
    assert heat.shape == (4, 256, 256) and heat.min() >= 0.0 and heat.max() <= 1.0
    assert heat.max() > 0.5  # each member's map peaks at 1 unless nothing raised the probability
    np.testing.assert_allclose(heat, expected, atol=1e-4)


def test_member_trained_by_the_tfx_trainer_serves_raw_examples(pipeline_inputs, tmp_path):
    root, examples = pipeline_inputs
    transform_graph = standard_artifacts.TransformGraph()
    transform_graph.uri = str(root / "transform")
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    model_run = standard_artifacts.ModelRun()
    model_run.uri = str(tmp_path / "model_run")
    exec_properties = {
        standard_component_specs.RUN_FN_KEY: "ich_model.trainer.run_fn",
        standard_component_specs.TRAIN_ARGS_KEY: proto_utils.proto_to_json(trainer_pb2.TrainArgs(num_steps=6)),
        standard_component_specs.EVAL_ARGS_KEY: proto_utils.proto_to_json(trainer_pb2.EvalArgs(num_steps=2)),
        standard_component_specs.CUSTOM_CONFIG_KEY: json.dumps(
            {"member": "a", "preset": "tiny", "train_steps": 6, "eval_steps": 2, "batch_size": 8,
             "eval_every_steps": 3}),
    }
    GenericExecutor().Do(
        {standard_component_specs.EXAMPLES_KEY: [examples],
         standard_component_specs.TRANSFORM_GRAPH_KEY: [transform_graph]},
        {standard_component_specs.MODEL_KEY: [model], standard_component_specs.MODEL_RUN_KEY: [model_run]},
        exec_properties)

    serving_dir = path_utils.serving_model_path(artifact_utils.get_single_uri([model]))
    loaded = tf.saved_model.load(serving_dir)
    serialized, images = eval_batch(root)
    served = loaded.signatures[SERVING_SIGNATURE](examples=serialized)
    from_images = loaded.member_outputs_from_images(tf.constant(images))
    np.testing.assert_allclose(served[PROBABILITIES].numpy(), from_images[PROBABILITIES].numpy()[:, 0], atol=1e-5)
    np.testing.assert_allclose(served[EMBEDDING].numpy(), from_images[EMBEDDING].numpy(), atol=1e-5)
    assert np.all(served[SPREAD].numpy() == 0)
    assert OOD_SCORE not in served and OUT_OF_DISTRIBUTION not in served  # the Ensemble fits the OOD model
    assert list(Path(model_run.uri).rglob("events.out.tfevents*"))  # TensorBoard logs were written

    member = read_description(serving_dir)["member"]
    assert member["name"] == "a" and member["training"]["steps_run"] == 6
    assert not member["training"]["warm_started"]
    assert member["training"]["kept_at_step"] in (3, 6)  # evaluations every 3 steps
    assert member["network"] == PRESETS["tiny"].get_config()
    train_labels = np.array([e.features.feature["label"].int64_list.value
                             for e in read_split(root / "examples", "train")])
    np.testing.assert_allclose(member["prevalence"]["moved_to"], train_labels.mean(axis=0))
    # The balanced batches' prevalence (test_members checks sampled_prevalence against the sampler's draws).
    np.testing.assert_allclose(member["prevalence"]["trained_on"],
                               sampled_prevalence(train_labels.T @ train_labels, len(train_labels)))


def test_the_trainer_refuses_steps_that_disagree_with_its_settings(pipeline_inputs, tmp_path):
    root, examples = pipeline_inputs
    transform_graph = standard_artifacts.TransformGraph()
    transform_graph.uri = str(root / "transform")
    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri, model_run.uri = str(tmp_path / "model"), str(tmp_path / "model_run")
    exec_properties = {
        standard_component_specs.RUN_FN_KEY: "ich_model.trainer.run_fn",
        standard_component_specs.TRAIN_ARGS_KEY: proto_utils.proto_to_json(trainer_pb2.TrainArgs(num_steps=6)),
        standard_component_specs.EVAL_ARGS_KEY: proto_utils.proto_to_json(trainer_pb2.EvalArgs(num_steps=2)),
        standard_component_specs.CUSTOM_CONFIG_KEY: json.dumps({"member": "a", "eval_steps": 2}),
    }
    with pytest.raises(ValueError, match="settings say train_steps 200, its TrainArgs 6"):
        GenericExecutor().Do(
            {standard_component_specs.EXAMPLES_KEY: [examples],
             standard_component_specs.TRANSFORM_GRAPH_KEY: [transform_graph]},
            {standard_component_specs.MODEL_KEY: [model], standard_component_specs.MODEL_RUN_KEY: [model_run]},
            exec_properties)
