"""Grad-CAM pictures of where the ensemble looked (`ich predict --explain`).

Grad-CAM (Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based Localization",
2017) weighs each channel of a late feature map by the mean gradient of one label's probability with respect to
it, sums the channels and keeps the positive part: a coarse map of the regions that raised that probability.

The exported ensemble holds its members as SavedModels, which give no gradients to intermediate layers, so each
member is rebuilt as a Keras network from the export's description (ich_model/description.py). The map is taken
at the network's stride-16 tap (16x16 at 256 input; the back end's third stage in the cascade): the deepest
features that still resolve a small haemorrhage. Every architecture declares that tap, the ablation networks
too. Each member's map is scaled to [0, 1] and the members' maps are averaged.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from ich_model.constants import BRAIN_WINDOW, MODEL_INPUT_SIZE, RGB_WINDOWS, SUBTYPES
from ich_model.description import rebuild_members
from ich_model.model.network import feature_tap, tap_layer

# The channel of the model input that shows the brain window (the picture a reader looks at).
BRAIN_CHANNEL = RGB_WINDOWS.index(BRAIN_WINDOW)
CAM_STRIDE = 16


class GradCam:
    """Grad-CAM heat maps of an ensemble's members for one label at a time."""

    def __init__(self, members: dict[str, tf.keras.Model], stride: int = CAM_STRIDE):
        self.feature_models = [
            tf.keras.Model(model.input, [tap_layer(model, feature_tap(stride)).output, model.output])
            for model in members.values()]

    def heatmaps(self, images: np.ndarray | tf.Tensor, label_index: int) -> np.ndarray:
        """[B, 256, 256, 3] model inputs -> [B, 256, 256] heat in [0, 1] for label `label_index` (project
        order), the members' maps averaged. A slice whose map is zero everywhere (nothing raised the
        probability) gets zeros."""
        images = tf.convert_to_tensor(images, tf.float32)
        maps = [self._member_map(model, images, label_index) for model in self.feature_models]
        return np.mean(maps, axis=0)

    @staticmethod
    def _member_map(model: tf.keras.Model, images: tf.Tensor, label_index: int) -> np.ndarray:
        with tf.GradientTape() as tape:
            features, probabilities = model(images, training=False)
            target = probabilities[:, label_index]
        gradients = tape.gradient(target, features)
        channel_weights = tf.reduce_mean(gradients, axis=[1, 2], keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(channel_weights * features, axis=-1))[..., None]
        cam = tf.image.resize(cam, [MODEL_INPUT_SIZE, MODEL_INPUT_SIZE], method="bilinear")[..., 0]
        peak = tf.reduce_max(cam, axis=[1, 2], keepdims=True)
        return tf.math.divide_no_nan(cam, peak).numpy()


def write_overlay(image: np.ndarray, heat: np.ndarray, title: str, out: str | os.PathLike) -> Path:
    """A PNG of the slice in the brain window with `heat` overlaid (transparent where it is low)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(4, 4.3), dpi=128)
    axes.imshow(image[..., BRAIN_CHANNEL], cmap="gray", vmin=0.0, vmax=1.0)
    axes.imshow(np.ma.masked_less(heat, 0.2), cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    axes.set_title(title, fontsize=9)
    axes.axis("off")
    figure.tight_layout()
    figure.savefig(out)
    plt.close(figure)
    return out


class Explainer:
    """Grad-CAM pictures for `ich predict --explain` with the export at `model_dir` (`loaded`: the same, already
    loaded): for every slice and every subtype whose ensemble probability reaches `threshold`,
    `<out_dir>/<image_id>_<subtype>.png`."""

    def __init__(self, model_dir: str | os.PathLike, out_dir: str | os.PathLike, threshold: float = 0.5,
                 loaded=None):
        from ich_model.serving import TRANSFORM_SIGNATURE

        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"the explain threshold must be in (0, 1], got {threshold}")
        loaded = tf.saved_model.load(os.fspath(model_dir)) if loaded is None else loaded
        self.transform = loaded.signatures[TRANSFORM_SIGNATURE]
        self.cam = GradCam(rebuild_members(model_dir, loaded))
        self.out_dir = Path(out_dir)
        self.threshold = threshold
        self.written: list[Path] = []

    def explain(self, examples: list[bytes], image_ids: list[str], probabilities: np.ndarray) -> None:
        """One batch of serialized raw Examples, their image IDs and ensemble probabilities [B, 6]."""
        from ich_model.preprocessing import IMAGE

        positive = probabilities[:, :len(SUBTYPES)] >= self.threshold
        if not positive.any():
            return
        images = self.transform(examples=tf.constant(examples))[IMAGE].numpy()
        for index, subtype in enumerate(SUBTYPES):
            rows = np.flatnonzero(positive[:, index])
            if not len(rows):
                continue
            heat = self.cam.heatmaps(images[rows], index)
            for row, slice_heat in zip(rows, heat, strict=True):
                title = f"{subtype} {probabilities[row, index]:.2f}  ({image_ids[row]})"
                self.written.append(write_overlay(images[row], slice_heat, title,
                                                  self.out_dir / f"{image_ids[row]}_{subtype}.png"))
