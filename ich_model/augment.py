"""Training-time augmentation of [B, 256, 256, 3] windowed images in [0, 1] (tf ops, run in tf.data).

Geometry is one random affine map per example (flip, rotation, shift, zoom), applied with bilinear sampling and
zero fill (air is 0 in every window). Intensity is what differs between scanners, drawn per example in
Hounsfield units and carried into each window: a calibration offset and a scale of the HU (equivalently a jitter
of every window's level and width), quantum noise, and a blur or sharpening (the reconstruction kernel). Pixels
that a window saturated (at 0 or 1) stay saturated: their HU lie beyond the window, and a few HU of jitter do not
bring them inside it. There is no random resized crop (its extra zoom can push an epidural or subdural collection
at the skull edge out of the frame while its label stays); docs/decisions.md ("Augmentation") has the figures.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import tensorflow as tf

from ich_model.constants import RGB_WINDOWS


@dataclass(frozen=True)
class Augmentation:
    flip: bool = True
    rotation_deg: float = 0.0
    shift: float = 0.0  # fraction of the image side
    zoom: float = 0.0  # scale in [1 - zoom, 1 + zoom]
    hu_offset: float = 0.0  # HU added to every pixel, in [-hu_offset, hu_offset]
    hu_scale: float = 0.0  # HU multiplied by a factor in [1 - hu_scale, 1 + hu_scale]
    noise_hu: float = 0.0  # Gaussian noise with a standard deviation in [0, noise_hu] HU
    sharpen: float = 0.0  # unsharp-mask gain in [-sharpen, sharpen]: negative blurs

    @property
    def has_intensity(self) -> bool:
        return any((self.hu_offset, self.hu_scale, self.noise_hu, self.sharpen))


NONE = Augmentation(flip=False)
STANDARD = Augmentation(flip=True, rotation_deg=10.0, shift=0.06, zoom=0.1)
STRONG = Augmentation(flip=True, rotation_deg=15.0, shift=0.08, zoom=0.15)
# Scanner-to-scanner variation: a few HU of offset, as the 4th RSNA place jittered its windows.
SCANNER_INTENSITY = {"hu_offset": 5.0, "hu_scale": 0.04, "noise_hu": 6.0, "sharpen": 0.6}


def with_scanner_intensity(spec: Augmentation, on: bool = True) -> Augmentation:
    """`spec`'s geometry with the scanner intensity jitter, or with none."""
    return dataclasses.replace(spec, **{name: value if on else 0.0 for name, value in SCANNER_INTENSITY.items()})

# Each window's HU per unit of its [0, 1] value, and the HU of its 0, in channel order.
_WINDOW_WIDTHS = tf.constant([w.width for w in RGB_WINDOWS], tf.float32)
_WINDOW_LOWERS = tf.constant([w.lower for w in RGB_WINDOWS], tf.float32)


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


def _blurred(images: tf.Tensor) -> tf.Tensor:
    """Each channel smoothed by a 3x3 binomial kernel (edges replicated)."""
    taps = tf.constant([1.0, 2.0, 1.0]) / 4.0
    kernel = tf.tile((taps[:, None] * taps[None, :])[:, :, None, None], [1, 1, images.shape[-1], 1])
    padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    return tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID")


def scanner_intensity(images: tf.Tensor, spec: Augmentation) -> tf.Tensor:
    """Per example, HU -> scale * HU + offset, plus noise of one random level, then a blur or sharpening, each
    carried into every window (a window's value is (HU - lower) / width); saturated pixels stay saturated."""
    batch = tf.shape(images)[0]

    def per_example(low, high):
        return tf.random.uniform([batch, 1, 1, 1], low, high)

    scale = per_example(1.0 - spec.hu_scale, 1.0 + spec.hu_scale)
    offset = per_example(-spec.hu_offset, spec.hu_offset)
    # HU' - lower = scale * (HU - lower) + (scale - 1) * lower + offset, divided by the width.
    out = scale * images + ((scale - 1.0) * _WINDOW_LOWERS + offset) / _WINDOW_WIDTHS
    noise_hu = per_example(0.0, spec.noise_hu) * tf.random.normal(tf.shape(images[..., :1]))
    out += noise_hu / _WINDOW_WIDTHS  # one HU noise field, seen through every window
    out += per_example(-spec.sharpen, spec.sharpen) * (out - _blurred(out))
    saturated_low, saturated_high = images <= 0.0, images >= 1.0
    return tf.where(saturated_low, 0.0, tf.where(saturated_high, 1.0, out))


def augment(images: tf.Tensor, spec: Augmentation) -> tf.Tensor:
    """Randomly transform a batch of images; the labels are unchanged by any of these operations."""
    if spec == NONE:
        return images
    batch, size = tf.shape(images)[0], images.shape[1]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=_affine(batch, size, spec), output_shape=tf.shape(images)[1:3],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    if spec.has_intensity:
        out = scanner_intensity(out, spec)
    return tf.clip_by_value(out, 0.0, 1.0)  # bilinear sums can round a hair past 1
