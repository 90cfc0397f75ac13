"""ConvNeXt back end (Liu et al., "A ConvNet for the 2020s", 2022).

A block is a 7x7 depthwise conv, LayerNorm, a 4x MLP with GELU, a learnable per-channel layer scale and
stochastic depth on the residual branch. Between stages, LayerNorm then a 2x2 stride-2 conv halves the
resolution. Alone (the ablation's ConvNeXt-only network) it starts from its own 4x4 patchify stem.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import tensorflow as tf

from ich_model.model.layers import LayerScale, StochasticDepth, layer_norm

# The paper's layer-scale start, for deep stacks trained for hundreds of epochs (a preset may choose another).
LAYER_SCALE_INIT = 1e-6


def trunc_normal() -> tf.keras.initializers.Initializer:
    """ConvNeXt's weight init (a new instance per layer, so that layers of one shape differ)."""
    return tf.keras.initializers.TruncatedNormal(stddev=0.02)


def convnext_block(x, drop_rate: float, name: str, layer_scale_init: float = LAYER_SCALE_INIT):
    channels = x.shape[-1]
    inputs = x
    x = tf.keras.layers.DepthwiseConv2D(7, padding="same", depthwise_initializer=trunc_normal(),
                                        name=f"{name}_dwconv")(x)
    x = layer_norm(f"{name}_ln")(x)
    x = tf.keras.layers.Dense(4 * channels, kernel_initializer=trunc_normal(), name=f"{name}_mlp1")(x)
    x = tf.keras.layers.Activation("gelu", name=f"{name}_gelu")(x)
    x = tf.keras.layers.Dense(channels, kernel_initializer=trunc_normal(), name=f"{name}_mlp2")(x)
    x = LayerScale(layer_scale_init, name=f"{name}_scale")(x)
    x = StochasticDepth(drop_rate, name=f"{name}_drop")(x)
    return tf.keras.layers.Add(name=f"{name}_add")([inputs, x])


def downsample(x, channels: int, name: str):
    x = layer_norm(f"{name}_ln")(x)
    return tf.keras.layers.Conv2D(channels, 2, 2, kernel_initializer=trunc_normal(), name=f"{name}_conv")(x)


@dataclass(frozen=True)
class ConvNeXt:
    """A ConvNeXt back end of four stages: `widths` channels and `depths` blocks per stage, at strides 4, 8, 16
    and 32. Stochastic depth grows linearly over all its blocks."""

    family: ClassVar[str] = "convnext"
    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    layer_scale_init: float = LAYER_SCALE_INIT  # each block's residual branch starts at this scale

    def stem(self, image):
        """The stride-4 stream of a network that has no front end: a 4x4 patchify conv and LayerNorm."""
        x = tf.keras.layers.Conv2D(self.widths[0], 4, 4, name="convnext_stem_conv")(image)
        return layer_norm("convnext_stem_ln")(x)

    def downsample(self, x, stage: int):
        """Halve the resolution of the stream entering `stage` (1, 2 or 3) and widen it to that stage's width."""
        return downsample(x, self.widths[stage], f"convnext_down{stage + 1}")

    def stage(self, x, stage: int, drop_path_rate: float):
        """The blocks of `stage` (0 to 3) on the stream `x`."""
        total, done = sum(self.depths), sum(self.depths[:stage])
        for block in range(self.depths[stage]):
            x = convnext_block(x, drop_path_rate * (done + block) / total,
                               f"convnext_stage{stage + 1}_block{block + 1}", self.layer_scale_init)
        return x

    def get_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> ConvNeXt:
        return cls(**{**config, "widths": tuple(config["widths"]), "depths": tuple(config["depths"])})
