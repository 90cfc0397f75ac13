"""tf.Transform preprocessing: stored pixels -> Hounsfield units -> three CT windows as RGB -> 256x256 in [0, 1].

`preprocessing_fn` runs in the Transform component; its graph is saved with the model, so training, TFMA and
serving apply exactly these ops. `preprocess_dicom` runs the same ops on one file, for prediction and tests.
There are no analyzers: every output depends on its own example only.

Storage decision: the Transform component runs with `materialize=False` and the Trainer applies this graph in
its input pipeline, since materialized images would cost far more disk than the raw Examples that TFMA and serving
read anyway, for a transform that costs a few percent of a core at CPU training speed. The measurements
(bench/transform.py) and the alternative for GPUs (uint8 materialization) are in docs/decisions.md
("Preprocessing: transform in the input pipeline").
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from ich_model import examples as ex
from ich_model.constants import CHANNELS, MODEL_INPUT_SIZE, NUM_LABELS, RGB_WINDOWS, Window
from ich_model.dicom import read_slice

IMAGE = "image"  # the transformed feature: the model input
# Features passed through untouched, for slicing in TFMA and for reports.
PASSTHROUGH = (ex.IMAGE_ID, ex.PATIENT_ID, ex.STUDY_UID, ex.INTERCEPT_GROUP, ex.IMAGE_SIZE, ex.RELATIVE_POSITION,
               ex.SLICE_INDEX, ex.SLICE_COUNT, ex.PIXEL_SPACING_MM, ex.SPAN)
# Where a slice lies in its study, in thirds (skull base, middle, vertex): a TFMA slice, since lesion types and
# artefacts differ along z.
POSITION_BAND = "position_band"
POSITION_BANDS = ("low", "mid", "high")


def hounsfield_units(stored: tf.Tensor, slope: tf.Tensor, intercept: tf.Tensor) -> tf.Tensor:
    """HU = stored * RescaleSlope + RescaleIntercept (DICOM PS3.3 C.11.1.1.2, modality LUT)."""
    return tf.cast(stored, tf.float32) * tf.cast(slope, tf.float32) + tf.cast(intercept, tf.float32)


def apply_window(hu: tf.Tensor, window: Window) -> tf.Tensor:
    """Map a window's HU range linearly onto [0, 1]: the level goes to 0.5, its edges to 0 and 1."""
    return tf.clip_by_value((hu - window.lower) / window.width, 0.0, 1.0)


def windowed_rgb(hu: tf.Tensor) -> tf.Tensor:
    """[H, W] HU -> [H, W, 3]: R = blood, G = brain, B = bone window."""
    return tf.stack([apply_window(hu, window) for window in RGB_WINDOWS], axis=-1)


def resize_to_model_input(rgb: tf.Tensor) -> tf.Tensor:
    """Any image size -> MODEL_INPUT_SIZE x MODEL_INPUT_SIZE; antialiased, so downscaled bone edges do not alias. The
    resampling weights sum to 1 only up to float rounding, so the result is clipped back into [0, 1]."""
    resized = tf.image.resize(rgb, [MODEL_INPUT_SIZE, MODEL_INPUT_SIZE], method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 1.0)


def slice_rgb(pixels: tf.Tensor, height: tf.Tensor, width: tf.Tensor, slope: tf.Tensor,
              intercept: tf.Tensor) -> tf.Tensor:
    """One slice's raw features (scalars) -> [height, width, 3] windows, before resizing."""
    stored = tf.reshape(tf.io.decode_raw(pixels, tf.int16, little_endian=True),
                        tf.stack([tf.cast(height, tf.int32), tf.cast(width, tf.int32)]))
    return windowed_rgb(hounsfield_units(stored, slope, intercept))


def slice_image(pixels: tf.Tensor, height: tf.Tensor, width: tf.Tensor, slope: tf.Tensor,
                intercept: tf.Tensor) -> tf.Tensor:
    """One slice's raw features (scalars) -> [MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, CHANNELS] float32 in [0, 1]."""
    return resize_to_model_input(slice_rgb(pixels, height, width, slope, intercept))


def _scalar_per_example(tensor: tf.Tensor) -> tf.Tensor:
    """A batch of one-value features, [B] or [B, 1] (as SchemaGen infers them), as [B]."""
    if isinstance(tensor, tf.SparseTensor):
        tensor = tf.sparse.to_dense(tensor, default_value=tf.zeros([], tensor.dtype) if tensor.dtype != tf.string
                                    else "")
    return tf.reshape(tensor, [-1])


def images_from_raw(inputs: dict[str, tf.Tensor]) -> tf.Tensor:
    """Batch of raw features -> [B, MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, CHANNELS]; each example may have its own
    size."""
    columns = tuple(_scalar_per_example(inputs[name]) for name in
                    (ex.PIXELS, ex.HEIGHT, ex.WIDTH, ex.RESCALE_SLOPE, ex.RESCALE_INTERCEPT))
    return tf.map_fn(lambda c: slice_image(*c), columns,
                     fn_output_signature=tf.TensorSpec([MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, CHANNELS], tf.float32))


def preprocessing_fn(inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """tf.Transform entry point (`ich_model.preprocessing.preprocessing_fn`)."""
    outputs = {IMAGE: images_from_raw(inputs)}
    if ex.LABEL in inputs:  # absent at serving time
        outputs[ex.LABEL] = tf.cast(tf.reshape(tf.sparse.to_dense(inputs[ex.LABEL]) if isinstance(
            inputs[ex.LABEL], tf.SparseTensor) else inputs[ex.LABEL], [-1, NUM_LABELS]), tf.float32)
    for name in PASSTHROUGH:
        if name in inputs:
            outputs[name] = inputs[name]
    if ex.RELATIVE_POSITION in inputs:
        outputs[POSITION_BAND] = position_band(inputs[ex.RELATIVE_POSITION])
    return outputs


def position_band(relative_position: tf.Tensor) -> tf.Tensor:
    """relative_position in [0, 1] -> "low" below 1/3, "mid" up to 2/3, "high" above (same shape, strings)."""
    index = tf.minimum(tf.cast(tf.floor(tf.cast(relative_position, tf.float32) * 3.0), tf.int32), 2)
    return tf.gather(tf.constant(POSITION_BANDS), index)


@tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64),
                              tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.float32),
                              tf.TensorSpec([], tf.float32)])
def _slice_image_graph(pixels, height, width, slope, intercept):
    return slice_image(pixels, height, width, slope, intercept)


def preprocess_dicom(path: str | os.PathLike | bytes) -> np.ndarray:
    """One DICOM file -> the [MODEL_INPUT_SIZE, MODEL_INPUT_SIZE, CHANNELS] float32 model input, by the
    preprocessing_fn's ops."""
    ct = read_slice(path)
    image = _slice_image_graph(tf.constant(ct.pixels.astype("<i2").tobytes()), tf.constant(ct.height, tf.int64),
                               tf.constant(ct.width, tf.int64), tf.constant(ct.rescale_slope, tf.float32),
                               tf.constant(ct.rescale_intercept, tf.float32))
    return image.numpy()
