"""Independent reference computations shared by the tests (pydicom and numpy only, none of the project's code)."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut


def is_rsna_wrapped(ds: pydicom.Dataset) -> bool:
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
