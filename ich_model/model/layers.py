"""Layers that more than one network family uses: stochastic depth, layer scale, LayerNorm."""

from __future__ import annotations

import tensorflow as tf

LAYER_NORM_EPSILON = 1e-6


class StochasticDepth(tf.keras.layers.Layer):
    """Drops a residual branch for a whole example with probability `rate` during training."""

    def __init__(self, rate: float, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, branch, training=None):
        if not training or self.rate == 0.0:
            return branch
        keep = 1.0 - self.rate
        shape = tf.concat([tf.shape(branch)[:1], tf.ones([tf.rank(branch) - 1], tf.int32)], axis=0)
        mask = tf.floor(keep + tf.random.uniform(shape, dtype=branch.dtype))
        return branch / keep * mask

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


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


def layer_norm(name: str, dtype=None) -> tf.keras.layers.LayerNormalization:
    return tf.keras.layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, name=name, dtype=dtype)
