"""Exported members and ensemble: raw tf.Examples in, numpy-checked mean and spread out, the same after a
reload from disk; a member warm-started from its namesake in an ensemble; and one member trained by the real
TFX Trainer executor with run_fn."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tfx.components.trainer.executor import GenericExecutor
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import path_utils, proto_utils

from components.dicom_example_gen import DicomExampleGen
from ich_model.model.cascade import build_cascade
from ich_model.preprocessing import preprocess_dicom
from ich_model.serving import (
    MEMBER_PROBABILITIES,
    PROBABILITIES,
    SERVING_SIGNATURE,
    SPREAD,
    member_output,
)
from ich_model.synth import IMAGES_DIR, generate_dataset
from ich_model.trainer import warm_start
from tests.pipeline_helpers import export_ensemble, read_split, run_example_gen, run_transform


@pytest.fixture(scope="module")
def pipeline_inputs(tmp_path_factory):
    """Ingested Examples and their transform graph, from a small synthetic set."""
    root = tmp_path_factory.mktemp("serving")
    generate_dataset(root / "rsna", patients=8, slices_per_study=4, seed=13, size=96, positive_fraction=1.0,
                     progress=False)
    examples = run_example_gen(DicomExampleGen(str(root / "rsna"), train_share=0.5), root / "examples")
    run_transform(root / "examples", root / "transform", root / "tft-tmp")
    return root, examples


def eval_batch(root: Path):
    examples = read_split(root / "examples", "eval")
    ids = [e.features.feature["image_id"].bytes_list.value[0].decode() for e in examples]
    images = np.stack([preprocess_dicom(root / "rsna" / IMAGES_DIR / f"{i}.dcm") for i in ids])
    return tf.constant([e.SerializeToString() for e in examples]), images


def test_ensemble_reports_numpy_mean_and_spread_and_survives_a_reload(pipeline_inputs, tmp_path):
    root, _ = pipeline_inputs
    serialized, images = eval_batch(root)
    members = [build_cascade("tiny", seed=seed) for seed in (1, 2, 3)]
    expected = np.stack([m(images, training=False).numpy() for m in members], axis=1)  # [B, 3, 6]
    ensemble_dir = export_ensemble(root / "transform", members, tmp_path)

    served = tf.saved_model.load(ensemble_dir).signatures[SERVING_SIGNATURE](examples=serialized)
    np.testing.assert_allclose(served[MEMBER_PROBABILITIES].numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(served[PROBABILITIES].numpy(), expected.mean(axis=1), atol=1e-5)
    np.testing.assert_allclose(served[SPREAD].numpy(), expected.std(axis=1), atol=1e-5)
    for index, name in enumerate("abc"):
        np.testing.assert_allclose(served[member_output(name)].numpy(), expected[:, index], atol=1e-5)
    assert served[PROBABILITIES].shape == (len(images), 6)


def test_a_member_warm_starts_from_its_namesake_in_the_ensemble(pipeline_inputs, tmp_path):
    root, _ = pipeline_inputs
    _, images = eval_batch(root)
    members = [build_cascade("tiny", seed=seed) for seed in (1, 2, 3)]
    ensemble_dir = export_ensemble(root / "transform", members, tmp_path)

    fresh = build_cascade("tiny", seed=99)
    assert not np.allclose(fresh(images, training=False).numpy(), members[1](images, training=False).numpy())
    assert warm_start(fresh, ensemble_dir, "b")
    np.testing.assert_allclose(fresh(images, training=False).numpy(), members[1](images, training=False).numpy(),
                               atol=1e-6)

    other_architecture = build_cascade("b0", seed=99)
    before = [v.numpy() for v in other_architecture.variables]
    assert not warm_start(other_architecture, ensemble_dir, "b")  # logged; the member trains from scratch
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, other_architecture.variables, strict=True))
    with pytest.raises(ValueError, match="no_such_member"):
        warm_start(fresh, ensemble_dir, "no_such_member")


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
            {"member": "a", "preset": "tiny", "batch_size": 8, "eval_every_steps": 3}),
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
    from_images = loaded.member_probabilities_from_images(tf.constant(images)).numpy()
    np.testing.assert_allclose(served[PROBABILITIES].numpy(), from_images[:, 0], atol=1e-5)
    assert np.all(served[SPREAD].numpy() == 0)
    assert list(Path(model_run.uri).rglob("events.out.tfevents*"))  # TensorBoard logs were written
