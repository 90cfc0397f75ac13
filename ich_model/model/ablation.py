"""The ablation's single-family networks, for comparing the cascade with its parts at a similar size:
an EfficientNetV2 network (the front end alone, with the same head) and a ConvNeXt network (its own patchify
stem, the back end alone, the same head)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ich_model.constants import IMAGE_SIZE, NUM_LABELS
from ich_model.model.cascade import PRESETS, CascadeSpec, build_cascade, classification_head
from ich_model.model.convnext import convnext_block, downsample, layer_norm
from ich_model.model.efficientnet import B0_STAGES, FrontEndSpec, efficientnet_v2_features

# Sized to the tiny cascade (1.12 M parameters): within 25% of it. The ConvNeXt network's blocks start at the
# tiny cascade's layer scale.
EFFICIENTNET_ONLY_TINY = FrontEndSpec(32, B0_STAGES, width=0.75, depth=0.34)
CONVNEXT_ONLY_TINY = ((40, 80, 152, 224), (1, 1, 2, 1))


def _inputs():
    image = tf.keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    return image, tf.keras.layers.Rescaling(2.0, offset=-1.0, name="to_signed_unit_range")(image)


def build_efficientnet_only(front: FrontEndSpec = EFFICIENTNET_ONLY_TINY, prior: np.ndarray | None = None,
                            seed: int | None = None, drop_path_rate: float = 0.05,
                            name: str = "efficientnet_only") -> tf.keras.Model:
    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    image, scaled = _inputs()
    x = efficientnet_v2_features(scaled, front, drop_path_rate)[-1]
    prior = np.full(NUM_LABELS, 0.5) if prior is None else prior
    return tf.keras.Model(image, classification_head(x, prior, CascadeSpec.head_dropout), name=name)


def build_convnext_only(dims_depths=CONVNEXT_ONLY_TINY, prior: np.ndarray | None = None, seed: int | None = None,
                        drop_path_rate: float = 0.05, name: str = "convnext_only") -> tf.keras.Model:
    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    dims, depths = dims_depths
    image, scaled = _inputs()
    x = tf.keras.layers.Conv2D(dims[0], 4, 4, name="convnext_stem_conv")(scaled)
    x = layer_norm("convnext_stem_ln")(x)
    total, done = sum(depths), 0
    for stage, (width, depth) in enumerate(zip(dims, depths, strict=True)):
        if stage:
            x = downsample(x, width, f"convnext_down{stage + 1}")
        for block in range(depth):
            x = convnext_block(x, drop_path_rate * done / total, f"convnext_stage{stage + 1}_block{block + 1}",
                               PRESETS["tiny"].layer_scale_init)
            done += 1
    prior = np.full(NUM_LABELS, 0.5) if prior is None else prior
    return tf.keras.Model(image, classification_head(x, prior, CascadeSpec.head_dropout), name=name)


ARCHITECTURES = ("cascade", "efficientnet_only", "convnext_only")


def build_architecture(architecture: str, preset: str = "tiny", prior: np.ndarray | None = None,
                       seed: int | None = None, name: str | None = None) -> tf.keras.Model:
    """The cascade of `preset`, or one of its single-family rivals (sized to the tiny preset)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; architectures are {', '.join(ARCHITECTURES)}")
    named = {"name": name} if name else {}
    if architecture == "cascade":
        return build_cascade(preset, prior=prior, seed=seed, **named)
    if preset != "tiny":
        raise ValueError(f"the single-family networks are sized to the tiny preset, not {preset!r}")
    build = build_efficientnet_only if architecture == "efficientnet_only" else build_convnext_only
    return build(prior=prior, seed=seed, **named)
