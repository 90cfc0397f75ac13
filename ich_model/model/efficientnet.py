"""EfficientNetV2 front end, written as data: a stage table and one builder (tf.keras = tf_keras 2.16).

Fused-MBConv stages (one full 3x3 expansion conv) come first, where feature maps are large and depthwise convs
are memory-bound; MBConv stages with squeeze-and-excitation follow. BatchNorm, SiLU, stochastic depth on the
residual branches, as in Tan & Le, "EfficientNetV2: Smaller Models and Faster Training" (2021).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import tensorflow as tf

from ich_model.model.layers import StochasticDepth

FUSED, MBCONV = "fused", "mbconv"
BN_MOMENTUM = 0.9


def conv_init() -> tf.keras.initializers.Initializer:
    """Variance scaling as the reference implementation uses for convolutions (a new instance per layer: one
    shared unseeded instance would give every layer of a shape the same weights)."""
    return tf.keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="truncated_normal")


@dataclass(frozen=True)
class Stage:
    """One row of a stage table."""

    block: str  # FUSED or MBCONV
    repeats: int
    channels: int
    expansion: int
    se_ratio: float  # squeeze-and-excitation width relative to the block's input channels; 0 = none
    stride: int
    kernel: int = 3


@dataclass(frozen=True)
class EfficientNetV2:
    """An EfficientNetV2 front end: a stage table scaled by `width` and `depth`, tapped after the stages whose
    outputs lie at strides 4, 8, 16 and 32 (`taps`, 0-based indices into the table)."""

    family: ClassVar[str] = "efficientnet"
    stem_channels: int
    stages: tuple[Stage, ...]
    width: float = 1.0  # channel multiplier
    depth: float = 1.0  # repeat multiplier
    taps: tuple[int, int, int, int] = (1, 2, 4, 5)

    def features(self, image, drop_path_rate: float) -> list:
        """The front end on `image`: its features at strides 4, 8, 16 and 32."""
        outputs = efficientnet_v2_features(image, self, drop_path_rate)
        return [outputs[i] for i in self.taps]

    def get_config(self) -> dict:
        return asdict(self)

    @classmethod
    def from_config(cls, config: dict) -> EfficientNetV2:
        return cls(**{**config, "stages": tuple(Stage(**stage) for stage in config["stages"]),
                      "taps": tuple(config["taps"])})


B0_STAGES = (
    Stage(FUSED, 1, 16, 1, 0.0, 1),
    Stage(FUSED, 2, 32, 4, 0.0, 2),
    Stage(FUSED, 2, 48, 4, 0.0, 2),
    Stage(MBCONV, 3, 96, 4, 0.25, 2),
    Stage(MBCONV, 5, 112, 6, 0.25, 1),
    Stage(MBCONV, 8, 192, 6, 0.25, 2),
)
S_STAGES = (
    Stage(FUSED, 2, 24, 1, 0.0, 1),
    Stage(FUSED, 4, 48, 4, 0.0, 2),
    Stage(FUSED, 4, 64, 4, 0.0, 2),
    Stage(MBCONV, 6, 128, 4, 0.25, 2),
    Stage(MBCONV, 9, 160, 6, 0.25, 1),
    Stage(MBCONV, 15, 256, 6, 0.25, 2),
)


def round_channels(channels: float, width: float, divisor: int = 8) -> int:
    """Scale a channel count and round it to a multiple of `divisor` (never below it)."""
    return max(divisor, int(channels * width + divisor / 2) // divisor * divisor)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(repeats * depth))


def _conv_bn(x, channels: int, kernel: int, stride: int, name: str, activation: bool = True):
    x = tf.keras.layers.Conv2D(channels, kernel, stride, padding="same", use_bias=False,
                               kernel_initializer=conv_init(), name=f"{name}_conv")(x)
    x = tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    return tf.keras.layers.Activation("swish", name=f"{name}_act")(x) if activation else x


def _squeeze_excite(x, reduced: int, name: str):
    channels = x.shape[-1]
    se = tf.keras.layers.GlobalAveragePooling2D(keepdims=True, name=f"{name}_se_squeeze")(x)
    se = tf.keras.layers.Conv2D(reduced, 1, activation="swish", kernel_initializer=conv_init(),
                                name=f"{name}_se_reduce")(se)
    se = tf.keras.layers.Conv2D(channels, 1, activation="sigmoid", kernel_initializer=conv_init(),
                                name=f"{name}_se_expand")(se)
    return tf.keras.layers.Multiply(name=f"{name}_se_excite")([x, se])


def _block(x, stage: Stage, in_channels: int, out_channels: int, stride: int, drop_rate: float, name: str):
    inputs = x
    expanded = in_channels * stage.expansion
    if stage.block == FUSED:
        if stage.expansion != 1:
            x = _conv_bn(x, expanded, stage.kernel, stride, f"{name}_expand")
        if stage.se_ratio:
            x = _squeeze_excite(x, max(1, int(in_channels * stage.se_ratio)), name)
        if stage.expansion != 1:
            x = _conv_bn(x, out_channels, 1, 1, f"{name}_project", activation=False)
        else:
            x = _conv_bn(x, out_channels, stage.kernel, stride, f"{name}_project")
    else:
        if stage.expansion != 1:
            x = _conv_bn(x, expanded, 1, 1, f"{name}_expand")
        x = tf.keras.layers.DepthwiseConv2D(stage.kernel, stride, padding="same", use_bias=False,
                                            depthwise_initializer=conv_init(), name=f"{name}_dwconv")(x)
        x = tf.keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(x)
        x = tf.keras.layers.Activation("swish", name=f"{name}_dw_act")(x)
        if stage.se_ratio:
            x = _squeeze_excite(x, max(1, int(in_channels * stage.se_ratio)), name)
        x = _conv_bn(x, out_channels, 1, 1, f"{name}_project", activation=False)
    if stride == 1 and in_channels == out_channels:
        x = StochasticDepth(drop_rate, name=f"{name}_drop")(x)
        x = tf.keras.layers.Add(name=f"{name}_add")([x, inputs])
    return x


def efficientnet_v2_features(image, spec: EfficientNetV2, drop_path_rate: float = 0.0, name: str = "effnet"):
    """Build the front end on `image`; returns every stage's output (stage i at index i)."""
    stages = [Stage(s.block, round_repeats(s.repeats, spec.depth), round_channels(s.channels, spec.width),
                    s.expansion, s.se_ratio, s.stride, s.kernel) for s in spec.stages]
    total_blocks = sum(s.repeats for s in stages)
    x = _conv_bn(image, round_channels(spec.stem_channels, spec.width), 3, 2, f"{name}_stem")
    channels = x.shape[-1]
    outputs, block_index = [], 0
    for i, stage in enumerate(stages):
        for j in range(stage.repeats):
            # Drop rate grows linearly with depth, as in the reference implementation.
            rate = drop_path_rate * block_index / total_blocks
            x = _block(x, stage, channels, stage.channels, stage.stride if j == 0 else 1, rate,
                       f"{name}_stage{i + 1}_block{j + 1}")
            channels = stage.channels
            block_index += 1
        outputs.append(x)
    return outputs
