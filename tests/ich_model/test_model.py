"""The networks: shapes and sizes per preset, the B0 front end against keras.applications, FLOPs against the
published figures, specs that rebuild from their configs, the declared taps, and the pieces that training relies
on."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ich_model.constants import CHANNELS, MODEL_INPUT_SIZE, NUM_LABELS
from ich_model.model.efficientnet import B0_STAGES, S_STAGES, EfficientNetV2, efficientnet_v2_features
from ich_model.model.layers import StochasticDepth
from ich_model.model.network import STRIDES, NetworkSpec, build_network, feature_tap, model_flops, tap_layer
from ich_model.model.presets import ABLATIONS, ARCHITECTURES, PRESETS, build_cascade, network_spec


def front_end(stages, stem: int) -> tf.keras.Model:
    image = tf.keras.Input((MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, CHANNELS))
    return tf.keras.Model(image, efficientnet_v2_features(image, EfficientNetV2(stem, stages))[-1])


@pytest.mark.parametrize("name, stages, stem, application, last_block", [
    ("b0", B0_STAGES, 32, tf.keras.applications.EfficientNetV2B0, "block6h_add"),
    ("s", S_STAGES, 24, tf.keras.applications.EfficientNetV2S, "block6o_add"),
])
def test_front_end_matches_keras_applications(name, stages, stem, application, last_block):
    reference = application(include_top=False, weights=None,
                            input_shape=(MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, CHANNELS), include_preprocessing=False)
    cut = tf.keras.Model(reference.input, reference.get_layer(last_block).output)
    ours = front_end(stages, stem)
    assert abs(ours.count_params() - cut.count_params()) <= 0.01 * cut.count_params()
    assert ours.output.shape == cut.output.shape


@pytest.mark.parametrize("application, published_gmacs", [
    (tf.keras.applications.EfficientNetV2B0, 0.72),  # Tan & Le 2021, table 7
    (tf.keras.applications.ConvNeXtTiny, 4.5),  # Liu et al. 2022, table 1 (their "FLOPs" are MACs)
])
def test_flops_counter_agrees_with_the_papers_at_224(application, published_gmacs):
    model = application(include_top=True, weights=None, input_shape=(224, 224, 3))
    assert model_flops(model) / 2e9 == pytest.approx(published_gmacs, rel=0.03)


@pytest.mark.parametrize("preset, min_params, max_params", [("tiny", 0.5e6, 2e6), ("b0", 15e6, 25e6),
                                                            ("s", 40e6, 55e6)])
def test_presets_build_with_their_sizes(preset, min_params, max_params):
    model = build_cascade(preset)
    assert model.output.shape.as_list() == [None, NUM_LABELS]
    assert min_params <= model.count_params() <= max_params
    # Every tap is fused at its own stride: 64, 32, 16, 8 pixels at 256 input.
    assert [model.get_layer(f"skip{i}_ln").output.shape[1] for i in range(1, 5)] == [64, 32, 16, 8]
    assert [model.get_layer(f"skip{i}_ln").output.shape[-1] for i in range(1, 5)] == list(PRESETS[preset].back.widths)


def test_output_bias_is_the_label_prior_logit():
    prior = np.array([0.004, 0.05, 0.035, 0.047, 0.063, 0.143])
    model = build_cascade("tiny", prior=prior)
    bias = model.get_layer("probabilities").bias.numpy()
    np.testing.assert_allclose(1 / (1 + np.exp(-bias)), prior, rtol=1e-5)


def test_seed_fixes_the_initialisation_and_layers_differ():
    a, b, c = build_cascade("tiny", seed=1), build_cascade("tiny", seed=1), build_cascade("tiny", seed=2)
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(a.get_weights(), c.get_weights(), strict=True))
    kernels = [layer.kernel.numpy() for layer in a.layers if layer.name.endswith("_mlp1")]
    assert len(kernels) >= 2 and not np.array_equal(kernels[0][:8, :8], kernels[1][:8, :8])


def test_stochastic_depth_drops_whole_examples_at_its_rate():
    layer = StochasticDepth(0.3)
    branch = tf.ones((4000, 2, 2, 3))
    np.testing.assert_array_equal(layer(branch, training=False).numpy(), branch.numpy())
    out = layer(branch, training=True).numpy()
    per_example = out.reshape(4000, -1)
    assert np.all((per_example == 0).all(axis=1) | np.isclose(per_example, 1 / 0.7).all(axis=1))
    assert (per_example[:, 0] == 0).mean() == pytest.approx(0.3, abs=0.03)


def test_front_end_weights_load_from_a_local_keras_applications_file(tmp_path):
    """A no-top EfficientNetV2-B0 weights file (random here, ImageNet for a user who has one) loads into the
    b0 front end, which then computes exactly what keras.applications computes."""
    tf.keras.utils.set_random_seed(5)
    reference = tf.keras.applications.EfficientNetV2B0(include_top=False, weights=None,
                                                       input_shape=(MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, CHANNELS),
                                                       include_preprocessing=False)
    weights_file = tmp_path / "efficientnetv2-b0_notop.h5"
    reference.save_weights(str(weights_file))
    model = build_cascade("b0", seed=9, front_end_weights=str(weights_file))
    ours = tf.keras.Model(model.input, model.get_layer("effnet_stage6_block8_add").output)
    theirs = tf.keras.Model(reference.input, reference.get_layer("block6h_add").output)
    images = np.random.default_rng(0).random((2, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, CHANNELS)).astype(np.float32)
    np.testing.assert_allclose(ours(images, training=False).numpy(),
                               theirs(images * 2 - 1, training=False).numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="ImageNet weights exist for the b0 and s front ends"):
        build_cascade("tiny", front_end_weights=str(weights_file))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_cascade("b0", front_end_weights=str(tmp_path / "missing.h5"))


def test_ablation_networks_match_the_tiny_cascade_within_a_quarter():
    cascade = build_cascade("tiny")
    for name, spec in ABLATIONS.items():
        other = build_network(spec, name=name)
        assert other.output.shape.as_list() == [None, NUM_LABELS]
        assert abs(other.count_params() / cascade.count_params() - 1) <= 0.25, other.name


def test_the_trainer_builds_each_ablation_architecture_by_name_and_refuses_others():
    layers = {name: {layer.name for layer in build_network(network_spec(name, "tiny"), name=f"member_{name}").layers}
              for name in ARCHITECTURES}
    assert any(n.startswith("fuse") for n in layers["cascade"])  # the skip fusion only the cascade has
    assert not any(n.startswith("convnext") for n in layers["efficientnet_only"])
    assert not any(n.startswith("effnet") for n in layers["convnext_only"])
    with pytest.raises(ValueError, match="unknown architecture"):
        network_spec("resnet")
    with pytest.raises(ValueError, match="sized to the tiny preset"):
        network_spec("convnext_only", "b0")


@pytest.mark.parametrize("spec", [*PRESETS.values(), *ABLATIONS.values()], ids=[*PRESETS, *ABLATIONS])
def test_every_spec_is_rebuilt_from_its_config_as_json(spec):
    import json

    config = json.loads(json.dumps(spec.get_config()))
    assert NetworkSpec.from_config(config) == spec
    assert config["architecture"] == spec.architecture


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_declares_its_taps_at_their_strides(architecture):
    model = build_network(network_spec(architecture, "tiny"))
    for stride in STRIDES:
        assert tap_layer(model, feature_tap(stride)).output.shape[1:3] == (MODEL_INPUT_SIZE // stride,) * 2
    assert tap_layer(model, "embedding").output.shape[-1] == tap_layer(model, feature_tap(32)).output.shape[-1]
    with pytest.raises(ValueError, match="declares no tap 'features_s2'"):
        tap_layer(model, "features_s2")


def test_a_spec_of_an_unknown_family_or_misplaced_taps_is_a_clear_error():
    config = PRESETS["tiny"].get_config()
    with pytest.raises(ValueError, match="unknown network family 'swin'"):
        NetworkSpec.from_config({**config, "back": {**config["back"], "family": "swin"}})
    # Stage 3 of B0 is at stride 16, not 8.
    misplaced = NetworkSpec(EfficientNetV2(32, B0_STAGES, width=0.5, depth=0.25, taps=(1, 3, 4, 5)))
    with pytest.raises(ValueError, match="stride-8 features are 16 pixels wide, not 32"):
        build_network(misplaced)
