"""The cascade's fusion rule: a front end's features (local detail) feed a back end's stages (global context).

    image 256 -> front end, tapped at strides 4, 8, 16, 32
                   |s4          |s8           |s16           |s32      (1x1 conv + LayerNorm each)
                   v            v             v              v
    back end:  [stream] -> stage1 -> down -> (+) stage2 -> down -> (+) stage3 -> down -> (+) stage4
                                                                   -> pool, LayerNorm, dropout, Dense(6, sigmoid)

Which strides are fused, and why: at 256 input the front end's (EfficientNetV2) and the back end's (ConvNeXt)
stage outputs lie at strides 4, 8, 16 and 32, so every tap meets a back-end stage at its own resolution without
resampling. All four are fused. The stride-4 and stride-8 taps carry the fine detail that thin subarachnoid lines,
small epidural lenses and a few-pixel haemorrhage need; the stride-16 and stride-32 taps carry the front end's
deeper, more abstract features, which the back end's large kernels then relate across the whole head. The
stride-4 tap is the back end's stream itself (its stem): the back end sees the image only through the front end,
which is what makes it a cascade rather than two networks side by side. The projections are 1x1 conv + LayerNorm
because the front end's features are BatchNorm-scaled while the back end works in LayerNorm scale.
"""

from __future__ import annotations

import tensorflow as tf

from ich_model.model.layers import layer_norm


def cascade_features(front_features: list, back, drop_path_rate: float) -> list:
    """The back end's stage outputs (strides 4, 8, 16, 32) with the front end's features at those strides
    (`front_features`) fused in: the first projected tap is the back end's stream, each later one is added to
    the downsampled stream before that stage's blocks."""
    x, outputs = None, []
    for stage, skip in enumerate(front_features):
        projected = tf.keras.layers.Conv2D(back.widths[stage], 1, name=f"skip{stage + 1}_proj")(skip)
        projected = layer_norm(f"skip{stage + 1}_ln")(projected)
        if x is None:
            x = projected
        else:
            x = tf.keras.layers.Add(name=f"fuse{stage + 1}")([back.downsample(x, stage), projected])
        x = back.stage(x, stage, drop_path_rate)
        outputs.append(x)
    return outputs
