"""Plain numpy/pydicom versions of the preprocessing maths, to check the TensorFlow graph against and to
benchmark it. The pipeline never calls these."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut

from ich_model.constants import MODEL_INPUT_SIZE, RGB_WINDOWS


def is_rsna_wrapped(ds: pydicom.Dataset) -> bool:
    """The RSNA quirk's signature: 12-bit unsigned pixels with an intercept above -100."""
    return ds.BitsStored == 12 and ds.PixelRepresentation == 0 and float(ds.RescaleIntercept) > -100


def rsna_hounsfield(ds: pydicom.Dataset) -> np.ndarray:
    """HU by pydicom's modality LUT, after the RSNA wrapped-pixel fix (add 1000, subtract 4096 from values
    >= 4096, intercept -1000) where it applies."""
    pixels = ds.pixel_array
    if is_rsna_wrapped(ds):
        fixed = pixels.astype(np.int32) + 1000
        fixed[fixed >= 4096] -= 4096
        return fixed.astype(np.float64) - 1000.0
    return apply_modality_lut(pixels, ds).astype(np.float64)


def windows_rgb(hu: np.ndarray) -> np.ndarray:
    return np.stack([np.clip((hu - w.lower) / w.width, 0.0, 1.0) for w in RGB_WINDOWS], axis=-1)


def triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """Antialiased bilinear resampling as an (n_out, n_in) matrix: a triangle kernel widened by the downscale
    factor, half-pixel centres, weights renormalised at the borders. Sample positions and weights are computed
    in float32 from the float32 scale out/in, as the resampling kernel does; in float64 they would differ by up
    to 2e-5 for scales such as 256/490."""
    f32 = np.float32
    inv_scale = f32(1.0 / float(f32(n_out) / f32(n_in)))
    support = max(inv_scale, f32(1.0))
    centres = (np.arange(n_out, dtype=f32) + f32(0.5)) * inv_scale
    x = (np.arange(n_in, dtype=f32)[None, :] + f32(0.5) - centres[:, None]) * (f32(1.0) / support)
    weights = np.clip(f32(1.0) - np.abs(x), f32(0.0), None)
    return (weights / weights.sum(axis=1, keepdims=True, dtype=f32)).astype(np.float64)


def resize(image: np.ndarray, size: int = MODEL_INPUT_SIZE) -> np.ndarray:
    rows = np.tensordot(triangle_weights(image.shape[0], size), image, axes=(1, 0))  # (size, W, C)
    resized = np.tensordot(triangle_weights(image.shape[1], size), rows, axes=(1, 1)).transpose(1, 0, 2)
    return np.clip(resized, 0.0, 1.0)


def preprocess_file(path) -> np.ndarray:
    return resize(windows_rgb(rsna_hounsfield(pydicom.dcmread(path)))).astype(np.float32)
