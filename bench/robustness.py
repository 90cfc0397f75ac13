"""What bench/quality.py measures beyond the generator's own distribution: inputs that are not head CT, and how
well the out-of-distribution scores tell them and the shifted set from in-distribution slices.

Inputs that are not head CT, written as DICOM beside the benchmark's sets (one folder per kind):
- `uniform_water`: a slice of water (0 HU) with scanner noise inside the reconstruction circle, air outside;
- `pure_noise`: every pixel drawn uniformly from -1000 to 2000 HU;
- `no_skull`: held-out head slices with the skull and scalp removed (every pixel above 150 HU, and everything
  outside the cranial cavity, set to air): a brain with no bone around it;
- `pydicom_ct`: pydicom's own CT test file (CT_small.dcm, not a head).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

NOT_HEAD_CT_KINDS = ("uniform_water", "pure_noise", "no_skull", "pydicom_ct")
SLICES_PER_KIND = 24
SKULL_HU = 150.0


def _with_pixels(template, hu: np.ndarray, instance: str, study: str):
    """A copy of the template slice holding `hu` (stored with the template's own rescale and bit depth)."""
    import pydicom

    ds = pydicom.dcmread(template)
    stored = (hu - float(ds.RescaleIntercept)) / float(ds.RescaleSlope)
    if ds.PixelRepresentation == 0:
        stored, dtype = np.clip(stored, 0, 2 ** ds.BitsStored - 1), np.uint16
    else:
        half = 2 ** (ds.BitsStored - 1)
        stored, dtype = np.clip(stored, -half, half - 1), np.int16
    ds.PixelData = np.rint(stored).astype(dtype).tobytes()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = instance
    ds.StudyInstanceUID = ds.SeriesInstanceUID = study
    return ds


def write_not_head_ct(out_dir: Path, templates: list[Path], seed: int) -> dict[str, Path]:
    """Write each kind's slices under out_dir/<kind>/ from held-out `templates` (their headers and, for
    `no_skull`, their pixels); returns kind -> folder. Kept when already written."""
    import pydicom
    from pydicom.data import get_testdata_file
    from scipy import ndimage

    folders = {kind: out_dir / kind for kind in NOT_HEAD_CT_KINDS}
    if all(folder.exists() and any(folder.iterdir()) for folder in folders.values()):
        return folders
    shutil.rmtree(out_dir, ignore_errors=True)
    for folder in folders.values():
        folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    shutil.copy(get_testdata_file("CT_small.dcm"), folders["pydicom_ct"] / "CT_small.dcm")
    with pydicom.config.disable_value_validation():  # the templates carry RSNA's ID_ UIDs
        for kind in ("uniform_water", "pure_noise", "no_skull"):
            for k, template in enumerate(templates[:SLICES_PER_KIND]):
                ds = pydicom.dcmread(template)
                hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                rows, cols = hu.shape
                if kind == "uniform_water":
                    yy, xx = np.mgrid[0:rows, 0:cols]
                    inside = np.hypot(yy - rows / 2, xx - cols / 2) < 0.45 * min(rows, cols)
                    hu = np.where(inside, rng.normal(0.0, rng.uniform(3.0, 10.0), hu.shape), -1000.0)
                elif kind == "pure_noise":
                    hu = rng.uniform(-1000.0, 2000.0, hu.shape)
                else:
                    bone = hu > SKULL_HU
                    cavity = ndimage.binary_fill_holes(bone) & ~ndimage.binary_dilation(bone, iterations=2)
                    hu = np.where(cavity & ~bone, hu, -1000.0)
                instance = f"ID_{kind}_{k:03d}"
                _with_pixels(template, hu, instance, f"ID_{kind}_{k:03d}_study").save_as(
                    folders[kind] / f"{instance}.dcm", enforce_file_format=True)
    return folders


def auroc(in_distribution: np.ndarray, out_of_distribution: np.ndarray) -> float:
    """AUROC of a score (higher = more unusual) for telling `out_of_distribution` from `in_distribution`."""
    from sklearn.metrics import roc_auc_score

    scores = np.concatenate([in_distribution, out_of_distribution])
    truth = np.concatenate([np.zeros(len(in_distribution)), np.ones(len(out_of_distribution))])
    return float(roc_auc_score(truth, scores))


def energy(member_probabilities: np.ndarray) -> np.ndarray:
    """Per slice, the members' mean joint energy of their six sigmoid outputs, sum log(1 + e^logit) (Wang et al.,
    NeurIPS 2021, for multi-label networks), negated so that higher is more unusual."""
    p = np.clip(member_probabilities.astype(np.float64), 1e-7, 1 - 1e-7)
    logits = np.log(p / (1 - p))
    return -np.mean(np.sum(np.logaddexp(0.0, logits), axis=-1), axis=-1)


def disagreement(spread: np.ndarray) -> np.ndarray:
    """Per slice, the members' mean spread over the six labels."""
    return spread.mean(axis=-1)
