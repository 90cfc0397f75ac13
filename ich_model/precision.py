"""Mixed precision for training on GPUs: which Keras policy a device wants, and a scope that sets it.

The members' convolutions compute in bfloat16 or float16 while their variables stay float32; the head (pooling,
LayerNorm, the sigmoid output) is float32 in every policy (ich_model/model/network.py), so the loss and the
metrics are computed in float32. A member is exported in float32 whatever it trained in (trainer.py).
"""

from __future__ import annotations

import contextlib
import logging

import tensorflow as tf

from ich_model.settings import PRECISIONS

FLOAT32, MIXED = PRECISIONS
# bfloat16 needs Ampere (compute capability 8.0) or newer on NVIDIA GPUs; older ones compute float16 fast, which
# needs loss scaling (Keras wraps the optimizer in a LossScaleOptimizer under "mixed_float16").
BFLOAT16_MIN_COMPUTE_CAPABILITY = (8, 0)


def keras_policy(precision: str) -> str:
    """The Keras policy name for `precision` ("float32" or "mixed") on this machine's devices."""
    if precision == FLOAT32:
        return "float32"
    if precision != MIXED:
        raise ValueError(f"unknown precision {precision!r}; precisions are {', '.join(PRECISIONS)}")
    capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability")
                    for gpu in tf.config.list_physical_devices("GPU")]
    if any(capability is not None and capability < BFLOAT16_MIN_COMPUTE_CAPABILITY for capability in capabilities):
        return "mixed_float16"
    return "mixed_bfloat16"  # every GPU here computes bfloat16, or the CPU does (oneDNN)


@contextlib.contextmanager
def precision_policy(precision: str):
    """Build and train under `precision`'s Keras policy; the previous global policy is restored after (the
    LocalDagRunner runs every Trainer in one process)."""
    previous = tf.keras.mixed_precision.global_policy()
    policy = keras_policy(precision)
    if policy != "float32":
        logging.info("training under the Keras %s policy", policy)
    tf.keras.mixed_precision.set_global_policy(policy)
    try:
        yield policy
    finally:
        tf.keras.mixed_precision.set_global_policy(previous)
