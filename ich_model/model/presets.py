"""Named networks: the cascade's sizes (`PRESETS`) and the ablation's single-family rivals (`ABLATIONS`).

A new front or back end is its own module (a spec class, see ich_model/model/network.py) and one entry here.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from ich_model.model.convnext import ConvNeXt
from ich_model.model.efficientnet import B0_STAGES, S_STAGES, EfficientNetV2
from ich_model.model.network import NetworkSpec, build_network
from ich_model.model.pretrained import load_front_end_weights

PRESETS: dict[str, NetworkSpec] = {
    # For tests and the CPU demo (a few hundred steps from scratch): B0's stage table at three-quarter width and a
    # quarter depth, and a narrow ConvNeXt of one block per stage whose blocks start at full scale (at the paper's
    # 1e-6 a short run leaves them near identity; docs/decisions.md has the comparison).
    "tiny": NetworkSpec(EfficientNetV2(32, B0_STAGES, width=0.75, depth=0.25),
                        ConvNeXt((24, 48, 96, 128), (1, 1, 1, 1), layer_scale_init=1.0), drop_path_rate=0.05),
    # EfficientNetV2-B0's stage table, ConvNeXt-nano widths behind it.
    "b0": NetworkSpec(EfficientNetV2(32, B0_STAGES), ConvNeXt((80, 160, 320, 640), (2, 2, 8, 2))),
    # EfficientNetV2-S front end, ConvNeXt-T widths and depths behind it.
    "s": NetworkSpec(EfficientNetV2(24, S_STAGES), ConvNeXt((96, 192, 384, 768), (3, 3, 9, 3)), drop_path_rate=0.2),
}

# The single-family networks, sized to the tiny cascade (within a quarter of its parameters), with its head,
# drop-path rate and layer scale.
ABLATIONS: dict[str, NetworkSpec] = {
    "efficientnet_only": NetworkSpec(EfficientNetV2(32, B0_STAGES, width=0.75, depth=0.34), drop_path_rate=0.05),
    "convnext_only": NetworkSpec(back=ConvNeXt((40, 80, 152, 224), (1, 1, 2, 1), layer_scale_init=1.0),
                                 drop_path_rate=0.05),
}
ARCHITECTURES = ("cascade", *ABLATIONS)


def network_spec(architecture: str = "cascade", preset: str = "tiny") -> NetworkSpec:
    """The cascade of `preset`, or one of its single-family rivals (sized to the tiny preset)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; architectures are {', '.join(ARCHITECTURES)}")
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; presets are {', '.join(PRESETS)}")
    if architecture == "cascade":
        return PRESETS[preset]
    if preset != "tiny":
        raise ValueError(f"the single-family networks are sized to the tiny preset, not {preset!r}")
    return ABLATIONS[architecture]


def build_cascade(preset: str = "tiny", prior: np.ndarray | None = None, seed: int | None = None,
                  name: str = "cascade", front_end_weights: str | None = None) -> tf.keras.Model:
    """The cascade of a named preset. `front_end_weights`: a local keras.applications EfficientNetV2 no-top
    weights file (b0 and s presets)."""
    model = build_network(network_spec("cascade", preset), prior=prior, seed=seed, name=name)
    if front_end_weights:
        load_front_end_weights(model, preset, front_end_weights)
    return model
