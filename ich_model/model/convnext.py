"""ConvNeXt back end: blocks and downsampling layers (Liu et al., "A ConvNet for the 2020s", 2022).

A block is a 7x7 depthwise conv, LayerNorm, a 4x MLP with GELU, a learnable per-channel layer scale and
stochastic depth on the residual branch. Between stages, LayerNorm then a 2x2 stride-2 conv halves the
resolution.
"""

from __future__ import annotations

import tensorflow as tf

from ich_model.model.efficientnet import StochasticDepth

LAYER_NORM_EPSILON = 1e-6
# The paper's layer-scale start, for deep stacks trained for hundreds of epochs (a preset may choose another).
LAYER_SCALE_INIT = 1e-6


def trunc_normal() -> tf.keras.initializers.Initializer:
    """ConvNeXt's weight init (a new instance per layer, so that layers of one shape differ)."""
    return tf.keras.initializers.TruncatedNormal(stddev=0.02)


class LayerScale(tf.keras.layers.Layer):
    """Multiplies each channel by a learnable factor, initialised small so deep stacks start near identity."""

    def __init__(self, init_value: float, **kwargs):
        super().__init__(**kwargs)
        self.init_value = init_value

    def build(self, input_shape):
        self.gamma = self.add_weight(name="gamma", shape=(input_shape[-1],),
                                     initializer=tf.keras.initializers.Constant(self.init_value))

    def call(self, x):
        return x * self.gamma

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value}


def layer_norm(name: str) -> tf.keras.layers.LayerNormalization:
    return tf.keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name)


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
