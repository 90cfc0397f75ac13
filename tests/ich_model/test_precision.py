"""Mixed precision: each preset's cascade is built under the GPU presets' policy (b0 and tiny also train two steps
on this CPU), with the head and the loss in float32, and is rebuilt in float32 for export with the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ich_model.constants import NUM_LABELS
from ich_model.members import MEMBERS, compile_member
from ich_model.model.network import EMBEDDING_LAYER, OUTPUT_LAYER, build_network
from ich_model.model.presets import network_spec
from ich_model.precision import keras_policy, precision_policy
from ich_model.settings import TrainerSettings
from ich_model.trainer import in_float32
from pipeline.configs import preset

BATCH = 1  # two steps of one image: the larger presets are slow on a CPU


def _batch(seed: int):
    rng = np.random.default_rng(seed)
    images = rng.random((BATCH, 256, 256, 3), dtype=np.float32)
    labels = (rng.random((BATCH, NUM_LABELS)) < 0.5).astype(np.float32)
    return tf.data.Dataset.from_tensors((images, labels)).repeat()


def test_the_gpu_presets_train_in_mixed_precision_and_the_demo_in_float32():
    assert preset("demo").trainer_settings.precision == "float32"
    assert {preset(name).trainer_settings.precision for name in ("workstation", "cluster")} == {"mixed"}
    assert keras_policy("float32") == "float32"
    assert keras_policy("mixed") == "mixed_bfloat16"  # no GPU here: the CPU computes bfloat16
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        TrainerSettings(precision="half")


# tiny: the float16 test below. s is b0's families at other sizes: built, not trained (its train step's graph
# alone takes minutes on a CPU).
@pytest.mark.parametrize("model_preset, train", [("b0", True), ("s", False)])
def test_each_preset_builds_under_the_mixed_policy_trains_and_exports_in_float32(model_preset, train):
    spec = network_spec("cascade", model_preset)
    with precision_policy("mixed") as policy:
        model = build_network(spec, seed=1, name="member_a")
        compile_member(model, MEMBERS["a"], total_steps=2)
        if train:
            history = model.fit(_batch(0), steps_per_epoch=2, epochs=1, verbose=0)
            assert np.isfinite(history.history["loss"]).all()
    assert policy == "mixed_bfloat16"
    assert tf.keras.mixed_precision.global_policy().name == "float32"  # restored
    convolutions = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    assert convolutions and {layer.compute_dtype for layer in convolutions} == {"bfloat16"}
    assert {v.dtype for v in model.trainable_variables} == {tf.float32}
    for name in (EMBEDDING_LAYER, "head_ln", OUTPUT_LAYER):
        assert model.get_layer(name).compute_dtype == "float32", name
    assert model.output.dtype == tf.float32

    exported = in_float32(model, spec)
    assert {layer.compute_dtype for layer in exported.layers if isinstance(layer, tf.keras.layers.Conv2D)} == {
        "float32"}
    for ours, theirs in zip(exported.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    images = next(iter(_batch(1)))[0]
    # The same weights computed in bfloat16 and in float32: probabilities within bfloat16's ~3 significant digits.
    np.testing.assert_allclose(exported(images).numpy(), model(images).numpy(), atol=0.05)


def test_float16_wraps_the_optimizer_in_loss_scaling_and_trains_with_a_float32_loss():
    """The policy of GPUs older than compute capability 8.0; run here on the CPU with the tiny cascade."""
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_network(network_spec("cascade", "tiny"), seed=2, name="member_b")
        compile_member(model, MEMBERS["b"], total_steps=2)
        history = model.fit(_batch(2), steps_per_epoch=2, epochs=1, verbose=0)
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    assert model.get_layer(OUTPUT_LAYER).compute_dtype == "float32"
    assert np.isfinite(history.history["loss"]).all()
