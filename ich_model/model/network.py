"""Networks as data. A `NetworkSpec` names a front end (image -> features at strides 4, 8, 16, 32), a back end
(stages at those strides that relate features across the head), or both, and `build_network` makes the Keras
model: both is the cascade (ich_model/model/cascade.py fuses them), one alone is an ablation network.

A family is a module of this package whose spec class carries the module's name as `family`: `efficientnet`
(EfficientNetV2), `convnext` (ConvNeXt). A front-end spec has `features(image, drop_path_rate)`; a back-end spec
has `widths` (channels per stage), `stem(image)`, `downsample(x, stage)` and `stage(x, stage, drop_path_rate)`.
Every spec echoes its arguments in `get_config()` and is rebuilt by `from_config`, so a network's description
rebuilds the network (ich_model/description.py).

Every network declares the same taps, as timm's `feature_info` does: `tap_layer(model, "features_s16")` is the
layer that holds its deepest features at stride 16 (Grad-CAM reads it), likewise `features_s4` ... `features_s32`,
and `embedding` (the pooled features that the head classifies).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import tensorflow as tf

from ich_model.constants import CHANNELS, MODEL_INPUT_SIZE, NUM_LABELS
from ich_model.model.cascade import cascade_features
from ich_model.model.layers import layer_norm

OUTPUT_LAYER = "probabilities"
EMBEDDING_LAYER = "embedding"
STRIDES = (4, 8, 16, 32)


def feature_tap(stride: int) -> str:
    """The name of a network's tap of its deepest features at `stride`."""
    if stride not in STRIDES:
        raise ValueError(f"networks are tapped at strides {STRIDES}, not {stride}")
    return f"features_s{stride}"


def tap_layer(model: tf.keras.Model, tap: str) -> tf.keras.layers.Layer:
    """The layer behind tap `tap` (feature_tap(stride) or EMBEDDING_LAYER) of a network from build_network."""
    taps = getattr(model, "feature_info", None)
    if not taps or tap not in taps:
        raise ValueError(f"{model.name} declares no tap {tap!r} (taps: {', '.join(taps or ['none'])}); "
                         f"networks from build_network declare {', '.join(map(feature_tap, STRIDES))} and "
                         f"{EMBEDDING_LAYER}")
    return model.get_layer(taps[tap])


class FrontEnd(Protocol):
    family: str

    def features(self, image, drop_path_rate: float) -> list: ...
    def get_config(self) -> dict: ...


class BackEnd(Protocol):
    family: str
    widths: tuple[int, ...]

    def stem(self, image): ...
    def downsample(self, x, stage: int): ...
    def stage(self, x, stage: int, drop_path_rate: float): ...
    def get_config(self) -> dict: ...


def _family_spec(config: dict) -> Any:
    """The front- or back-end spec that `config` (a spec's get_config() with its `family`) describes."""
    family = config.get("family")
    try:
        module = importlib.import_module(f"ich_model.model.{family}")
    except ModuleNotFoundError as error:
        if error.name != f"ich_model.model.{family}":
            raise  # the family's module exists but needs something missing
        raise ValueError(f"unknown network family {family!r}: there is no module ich_model.model.{family}") from None
    classes = [value for value in vars(module).values() if isinstance(value, type)
               and dataclasses.is_dataclass(value) and getattr(value, "family", None) == family]
    if len(classes) != 1:
        raise ValueError(f"ich_model.model.{family} declares {len(classes)} spec classes of family {family!r}, not one")
    return classes[0].from_config({key: value for key, value in config.items() if key != "family"})


def _part_config(part) -> dict | None:
    return None if part is None else {"family": part.family, **part.get_config()}


@dataclass(frozen=True)
class NetworkSpec:
    front: FrontEnd | None = None
    back: BackEnd | None = None
    drop_path_rate: float = 0.1
    head_dropout: float = 0.2

    def __post_init__(self):
        if self.front is None and self.back is None:
            raise ValueError("a network needs a front end, a back end or both")

    @property
    def architecture(self) -> str:
        """`cascade` for a front end feeding a back end, else `<family>_only`."""
        if self.front is not None and self.back is not None:
            return "cascade"
        return f"{(self.front or self.back).family}_only"

    def get_config(self) -> dict:
        """The spec as plain JSON values (lists, not tuples), so that a description read back compares equal."""
        return json.loads(json.dumps({"architecture": self.architecture, "front": _part_config(self.front),
                "back": _part_config(self.back), "drop_path_rate": self.drop_path_rate,
                "head_dropout": self.head_dropout}))

    @classmethod
    def from_config(cls, config: dict) -> NetworkSpec:
        return cls(front=config["front"] and _family_spec(config["front"]),
                   back=config["back"] and _family_spec(config["back"]),
                   drop_path_rate=config["drop_path_rate"], head_dropout=config["head_dropout"])


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
    """Pooling, LayerNorm, dropout and the sigmoid output, in float32 under any mixed-precision policy: the
    embedding, the probabilities and the loss keep float32's range."""
    x = tf.keras.layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER, dtype="float32")(x)
    x = layer_norm("head_ln", dtype="float32")(x)
    x = tf.keras.layers.Dropout(dropout, name="head_dropout", dtype="float32")(x)
    return tf.keras.layers.Dense(NUM_LABELS, activation="sigmoid", bias_initializer=label_prior_bias(prior),
                                 name=OUTPUT_LAYER, dtype="float32")(x)


def _stage_features(spec: NetworkSpec, image) -> list:
    if spec.front is None:
        x, outputs = spec.back.stem(image), []
        for stage in range(len(STRIDES)):
            x = x if stage == 0 else spec.back.downsample(x, stage)
            x = spec.back.stage(x, stage, spec.drop_path_rate)
            outputs.append(x)
        return outputs
    front = spec.front.features(image, spec.drop_path_rate)
    return front if spec.back is None else cascade_features(front, spec.back, spec.drop_path_rate)


def build_network(spec: NetworkSpec, prior: np.ndarray | None = None, seed: int | None = None,
                  name: str = "network") -> tf.keras.Model:
    """The network of `spec` for [B, 256, 256, 3] images in [0, 1] -> [B, 6] probabilities (project order),
    with the taps `features_s4` ... `features_s32` and `embedding`. `prior`: the label prevalence that the
    untrained output starts at (default 0.5); `seed` fixes the initialisation."""
    if seed is not None:
        tf.keras.utils.set_random_seed(seed)
    prior = np.full(NUM_LABELS, 0.5) if prior is None else prior
    image = tf.keras.Input((MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, CHANNELS), name="image")
    # EfficientNetV2's ImageNet weights expect inputs in [-1, 1]; every family starts from the same scale.
    scaled = tf.keras.layers.Rescaling(2.0, offset=-1.0, name="to_signed_unit_range")(image)
    features = _stage_features(spec, scaled)
    for stride, x in zip(STRIDES, features, strict=True):
        if x.shape[1] != MODEL_INPUT_SIZE // stride:
            raise ValueError(f"the {spec.architecture} network's stride-{stride} features are {x.shape[1]} "
                             f"pixels wide, not {MODEL_INPUT_SIZE // stride}: check its taps")
    model = tf.keras.Model(image, classification_head(features[-1], prior, spec.head_dropout), name=name)
    producers = {id(layer.output): layer.name for layer in model.layers}
    missing = [stride for stride, x in zip(STRIDES, features, strict=True) if id(x) not in producers]
    if missing:
        raise ValueError(f"the {spec.architecture} network's features at strides {missing} come from no layer of "
                         f"the model itself (a nested model?): its taps cannot be named")
    taps = {feature_tap(stride): producers[id(x)] for stride, x in zip(STRIDES, features, strict=True)}
    model.feature_info = {**taps, EMBEDDING_LAYER: EMBEDDING_LAYER}
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
            f"{model_flops(model) / 1e9:.2f} GFLOPs at {MODEL_INPUT_SIZE}x{MODEL_INPUT_SIZE}")
