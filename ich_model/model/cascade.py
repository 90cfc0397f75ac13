"""The cascade: EfficientNetV2 front end (local features) -> skip fusion -> ConvNeXt back end (global context).

    image 256 -> EfficientNetV2 stem and stages, tapped at strides 4, 8, 16, 32
                   |s4          |s8           |s16           |s32      (1x1 conv + LayerNorm each)
                   v            v             v              v
    ConvNeXt:  [stream] -> stage1 -> down -> (+) stage2 -> down -> (+) stage3 -> down -> (+) stage4
                                                                   -> pool, LayerNorm, dropout, Dense(6, sigmoid)

Which strides are fused, and why: at 256 input both networks' stage outputs lie at strides 4, 8, 16 and 32, so
every tap meets a back-end stage at its own resolution without resampling. All four are fused. The stride-4 and
stride-8 taps carry the fine detail that thin subarachnoid lines, small epidural lenses and a few-pixel
haemorrhage need; the stride-16 and stride-32 taps carry the front end's deeper, more abstract features, which
the back end's large 7x7 kernels then relate across the whole head. The stride-4 tap is the back end's stream
itself (its stem): the ConvNeXt sees the image only through the front end, which is what makes it a cascade
rather than two networks side by side. The projections are 1x1 conv + LayerNorm because the front end's
features are BatchNorm-scaled while the back end works in LayerNorm scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ich_model.constants import IMAGE_SIZE, NUM_LABELS
from ich_model.model.convnext import LAYER_SCALE_INIT, convnext_block, downsample, layer_norm
from ich_model.model.efficientnet import B0_STAGES, S_STAGES, FrontEndSpec, efficientnet_v2_features
from ich_model.model.pretrained import load_front_end_weights

OUTPUT_LAYER = "probabilities"


@dataclass(frozen=True)
class CascadeSpec:
    front: FrontEndSpec
    back_dims: tuple[int, int, int, int]
    back_depths: tuple[int, int, int, int]
    # Front-end stage whose output is at stride 4, 8, 16, 32 (0-based indices into the stage table).
    taps: tuple[int, int, int, int]
    drop_path_rate: float = 0.1
    head_dropout: float = 0.2
    layer_scale_init: float = LAYER_SCALE_INIT  # each ConvNeXt block's residual branch starts at this scale


PRESETS: dict[str, CascadeSpec] = {
    # For tests and the CPU demo (a few hundred steps from scratch): B0's stage table at three-quarter width and a
    # quarter depth, and a narrow ConvNeXt of one block per stage whose blocks start at full scale. On the
    # held-out benchmark (bench/quality.py, 200 steps) this beat the earlier split of the same parameter budget
    # (a half-width front end, a wider ConvNeXt starting at the paper's 1e-6): macro AUC 0.929 against 0.909,
    # weighted log loss 0.114 against 0.133. At 1e-6 a short run leaves the back end's blocks near identity.
    "tiny": CascadeSpec(FrontEndSpec(32, B0_STAGES, width=0.75, depth=0.25), (24, 48, 96, 128), (1, 1, 1, 1),
                        taps=(1, 2, 4, 5), drop_path_rate=0.05, layer_scale_init=1.0),
    # EfficientNetV2-B0's stage table, ConvNeXt-nano widths behind it.
    "b0": CascadeSpec(FrontEndSpec(32, B0_STAGES), (80, 160, 320, 640), (2, 2, 8, 2), taps=(1, 2, 4, 5)),
    # EfficientNetV2-S front end, ConvNeXt-T widths and depths behind it.
    "s": CascadeSpec(FrontEndSpec(24, S_STAGES), (96, 192, 384, 768), (3, 3, 9, 3), taps=(1, 2, 4, 5),
                     drop_path_rate=0.2),
}


def log_odds(prior: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(prior, dtype=np.float64), 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def label_prior_bias(prior: np.ndarray) -> tf.keras.initializers.Initializer:
    """Output bias log(p / (1 - p)), so that an untrained model already predicts each label's prevalence."""
    return tf.keras.initializers.Constant(log_odds(prior))


def prior_shift(trained_on: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Per label, what to add to an output logit to move it from the label prevalence it was trained on to the
    actual one: log-odds(actual) - log-odds(trained_on), Bayes' rule for a change of prior when the images of
    each class look alike in both (true of resampling; Saerens et al., Neural Computation 2002)."""
    return log_odds(actual) - log_odds(trained_on)


def correct_label_prior(model: tf.keras.Model, trained_on: np.ndarray, actual: np.ndarray) -> None:
    """Move a trained model's output from the label prevalence it was trained on to the actual one (prior_shift
    added to the output bias)."""
    layer = model.get_layer(OUTPUT_LAYER)
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel, bias + prior_shift(trained_on, actual).astype(bias.dtype)])


def classification_head(x, prior: np.ndarray, dropout: float):
    x = tf.keras.layers.GlobalAveragePooling2D(name="head_pool")(x)
    x = layer_norm("head_ln")(x)
    x = tf.keras.layers.Dropout(dropout, name="head_dropout")(x)
    return tf.keras.layers.Dense(NUM_LABELS, activation="sigmoid", bias_initializer=label_prior_bias(prior),
                                 name=OUTPUT_LAYER)(x)


def build_cascade(preset: str | CascadeSpec, prior: np.ndarray | None = None, seed: int | None = None,
                  name: str = "cascade", front_end_weights: str | None = None) -> tf.keras.Model:
    """The cascade network for [B, 256, 256, 3] images in [0, 1] -> [B, 6] probabilities (project order).
    `front_end_weights`: a local keras.applications EfficientNetV2 no-top weights file (b0 and s presets)."""
    spec = PRESETS[preset] if isinstance(preset, str) else preset
    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    prior = np.full(NUM_LABELS, 0.5) if prior is None else prior
    image = tf.keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    # EfficientNetV2's ImageNet weights expect inputs in [-1, 1].
    scaled = tf.keras.layers.Rescaling(2.0, offset=-1.0, name="to_signed_unit_range")(image)
    features = efficientnet_v2_features(scaled, spec.front, spec.drop_path_rate)
    skips = [features[i] for i in spec.taps]

    total = sum(spec.back_depths)
    x, done = None, 0
    for stage, (dims, depth, skip) in enumerate(zip(spec.back_dims, spec.back_depths, skips, strict=True)):
        projected = tf.keras.layers.Conv2D(dims, 1, name=f"skip{stage + 1}_proj")(skip)
        projected = layer_norm(f"skip{stage + 1}_ln")(projected)
        if x is None:
            x = projected
        else:
            x = downsample(x, dims, f"convnext_down{stage + 1}")
            x = tf.keras.layers.Add(name=f"fuse{stage + 1}")([x, projected])
        for block in range(depth):
            x = convnext_block(x, spec.drop_path_rate * done / total, f"convnext_stage{stage + 1}_block{block + 1}",
                               spec.layer_scale_init)
            done += 1
    model = tf.keras.Model(image, classification_head(x, prior, spec.head_dropout), name=name)
    if front_end_weights:
        if not isinstance(preset, str):
            raise ValueError("front-end weights load into the named presets b0 and s")
        load_front_end_weights(model, preset, front_end_weights)
    return model


def _layers(model: tf.keras.Model):
    """Every layer, looking inside nested models (keras.applications nest stems and downsamplers)."""
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            yield from _layers(layer)
        else:
            yield layer


def model_flops(model: tf.keras.Model) -> int:
    """Floating-point operations of one forward pass: 2 x the multiply-accumulates of every convolution and
    dense layer (the usual convention; normalisation and activations are left out)."""
    macs = 0
    for layer in _layers(model):
        out_shape = layer.output.shape
        spatial = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
        if isinstance(layer, tf.keras.layers.DepthwiseConv2D):
            macs += spatial * int(np.prod(layer.kernel_size)) * int(layer.input.shape[-1])
        elif isinstance(layer, tf.keras.layers.Conv2D):
            in_per_group = int(layer.input.shape[-1]) // layer.groups
            macs += spatial * int(np.prod(layer.kernel_size)) * in_per_group * layer.filters
        elif isinstance(layer, tf.keras.layers.Dense):
            macs += spatial * int(layer.input.shape[-1]) * layer.units
    return 2 * macs


def describe(model: tf.keras.Model) -> str:
    return (f"{model.name}: {model.count_params() / 1e6:.2f} M parameters, "
            f"{model_flops(model) / 1e9:.2f} GFLOPs at {IMAGE_SIZE}x{IMAGE_SIZE}")
