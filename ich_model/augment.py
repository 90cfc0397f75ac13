"""Training-time augmentation of [B, 256, 256, 3] windowed images in [0, 1] (tf ops, run in tf.data).

Geometry is one random affine map per example (flip, rotation, shift, zoom), applied with bilinear sampling and
zero fill (air is 0 in every window). Intensity jitter scales and shifts each window channel a little, which
stands in for small changes of window level and width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class Augmentation:
    flip: bool = True
    rotation_deg: float = 0.0
    shift: float = 0.0  # fraction of the image side
    zoom: float = 0.0  # scale in [1 - zoom, 1 + zoom]
    crop_min_area: float = 1.0  # random resized crop keeping at least this share of the area
    intensity: float = 0.0  # per-channel gain in [1 - intensity, 1 + intensity], offset in +-intensity / 2


NONE = Augmentation(flip=False)
STANDARD = Augmentation(flip=True, rotation_deg=10.0, shift=0.06, zoom=0.1)
STRONG = Augmentation(flip=True, rotation_deg=15.0, shift=0.08, zoom=0.15, crop_min_area=0.75, intensity=0.05)


def _affine(batch: int, size: int, spec: Augmentation) -> tf.Tensor:
    """Per-example projective transforms (output -> input pixel maps, 8 numbers each)."""
    angle = tf.random.uniform([batch], -1.0, 1.0) * spec.rotation_deg * math.pi / 180.0
    scale = 1.0 + tf.random.uniform([batch], -1.0, 1.0) * spec.zoom
    if spec.crop_min_area < 1.0:  # a random resized crop: keep a smaller area, shown at full size
        scale *= tf.sqrt(tf.random.uniform([batch], spec.crop_min_area, 1.0))
    shift = tf.random.uniform([batch, 2], -1.0, 1.0) * spec.shift * size
    flip = tf.where(tf.random.uniform([batch]) < 0.5, -1.0, 1.0) if spec.flip else tf.ones([batch])
    c = (size - 1) / 2.0
    cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
    a0, a1 = cos * flip, -sin
    b0, b1 = sin * flip, cos
    # Rotate/scale/flip about the centre, then shift: input = M @ (output - c) + c + shift.
    a2 = c - a0 * c - a1 * c + shift[:, 0]
    b2 = c - b0 * c - b1 * c + shift[:, 1]
    zeros = tf.zeros([batch])
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment(images: tf.Tensor, spec: Augmentation) -> tf.Tensor:
    """Randomly transform a batch of images; the labels are unchanged by any of these operations."""
    if spec == NONE:
        return images
    batch, size = tf.shape(images)[0], images.shape[1]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=_affine(batch, size, spec), output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    if spec.intensity:
        gain = 1.0 + tf.random.uniform([batch, 1, 1, 3], -1.0, 1.0) * spec.intensity
        offset = tf.random.uniform([batch, 1, 1, 3], -0.5, 0.5) * spec.intensity
        out = out * gain + offset
    return tf.clip_by_value(out, 0.0, 1.0)
