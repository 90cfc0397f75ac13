"""Training-time augmentation of [B, 256, 256, 3] windowed images in [0, 1] (tf ops, run in tf.data).

Geometry is one random affine map per example (flip, rotation, shift, zoom), applied with bilinear sampling and
zero fill (air is 0 in every window). There is no intensity jitter (a subarachnoid bleed is a small difference
of density, and a window jitter cost member B on the held-out benchmark) and no random resized crop (its extra
zoom can push an epidural or subdural collection at the skull edge out of the frame while its label stays);
docs/decisions.md ("Augmentation") has the figures.
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


NONE = Augmentation(flip=False)
STANDARD = Augmentation(flip=True, rotation_deg=10.0, shift=0.06, zoom=0.1)
STRONG = Augmentation(flip=True, rotation_deg=15.0, shift=0.08, zoom=0.15)


def _affine(batch: int, size: int, spec: Augmentation) -> tf.Tensor:
    """Per-example projective transforms (output -> input pixel maps, 8 numbers each)."""
    angle = tf.random.uniform([batch], -1.0, 1.0) * spec.rotation_deg * math.pi / 180.0
    scale = 1.0 + tf.random.uniform([batch], -1.0, 1.0) * spec.zoom
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
    return tf.clip_by_value(out, 0.0, 1.0)  # bilinear sums can round a hair past 1
