"""ImageNet weights for the `b0` and `s` front ends, from a keras.applications weights file the user has.

Nothing is downloaded: the file must be local (for example `efficientnetv2-b0_notop.h5`). The front end's
layers are built in the same order and shapes as keras.applications' EfficientNetV2 up to its last block, so the
weights are copied layer by layer, each pair checked for matching shapes.
"""

from __future__ import annotations

import os

import tensorflow as tf

from ich_model.constants import CHANNELS, MODEL_INPUT_SIZE

APPLICATIONS = {"b0": tf.keras.applications.EfficientNetV2B0, "s": tf.keras.applications.EfficientNetV2S}
FRONT_END_PREFIX = "effnet_"


def load_front_end_weights(model: tf.keras.Model, preset: str, weights_file: str | os.PathLike) -> None:
    """Copy keras.applications EfficientNetV2 weights (no top) into the cascade's front end."""
    if preset not in APPLICATIONS:
        raise ValueError(f"ImageNet weights exist for the {' and '.join(APPLICATIONS)} front ends, not {preset!r}")
    if not os.path.isfile(weights_file):
        raise FileNotFoundError(f"no weights file at {weights_file}; nothing is downloaded, give a local "
                                f"keras.applications EfficientNetV2 ({preset}) no-top .h5 file")
    reference = APPLICATIONS[preset](include_top=False, weights=os.fspath(weights_file),
                                     input_shape=(MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, CHANNELS),
                                     include_preprocessing=False)
    source = [layer for layer in reference.layers if layer.weights and not layer.name.startswith("top_")]
    target = [layer for layer in model.layers if layer.weights and layer.name.startswith(FRONT_END_PREFIX)]
    if len(source) != len(target):
        raise ValueError(f"{preset} front end has {len(target)} weighted layers, the weights file "
                         f"{len(source)}: not an EfficientNetV2-{preset.upper()} file")
    for src, dst in zip(source, target, strict=True):
        weights = src.get_weights()
        if [w.shape for w in weights] != [w.shape for w in dst.get_weights()]:
            raise ValueError(f"weights of {src.name} do not fit {dst.name}")
        dst.set_weights(weights)
