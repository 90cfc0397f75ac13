"""What the scanner adds: noise and artefacts, the stored-pixel encodings RSNA's files use, and DICOM headers.

Storage profiles follow the RSNA training set: about half the files are 16-bit signed, half 12-bit unsigned,
RescaleIntercept -1024 for most, and a few 12-bit files whose pixels wrapped round with an intercept of 0 or 1
(the fix: add 1000, subtract 4096 from values >= 4096, use intercept -1000). Oddities are over-represented
compared with RSNA (a few percent instead of under one) so that small sets still contain every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from ich_model.synth.nuisance import Nuisance

# Readers see these as the RSNA anonymisation left them: `ID_<hex>` in place of UIDs.
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.10.1472"


@dataclass(frozen=True)
class StorageProfile:
    name: str
    share: float  # of studies
    bits_stored: int
    pixel_representation: int  # 0 unsigned, 1 signed
    rescale_intercept: float
    wrapped: bool = False  # stored = HU mod 4096, written with a wrong intercept (RSNA quirk)
    padding_stored: int | None = None  # value outside the reconstruction circle, if the scanner pads

    def encode(self, hu: np.ndarray, outside_fov: np.ndarray) -> np.ndarray:
        """Stored pixel values for an HU image, as the scanner would write them."""
        hu = np.rint(hu)
        stored = np.mod(np.clip(hu, -1000, 3095), 4096) if self.wrapped else hu - self.rescale_intercept
        if self.pixel_representation == 0:
            stored = np.clip(stored, 0, 2**self.bits_stored - 1)
            dtype = np.uint16
        else:
            half = 2 ** (self.bits_stored - 1)
            stored = np.clip(stored, -half, half - 1)
            dtype = np.int16
        if self.padding_stored is not None:
            stored = np.where(outside_fov, self.padding_stored, stored)
        return stored.astype(dtype)


STORAGE_PROFILES: tuple[StorageProfile, ...] = (
    StorageProfile("int16, intercept -1024, padded", 0.30, 16, 1, -1024.0, padding_stored=-2000),
    StorageProfile("int16, intercept -1024", 0.17, 16, 1, -1024.0),
    StorageProfile("uint12, intercept -1024", 0.43, 12, 0, -1024.0),
    StorageProfile("uint12, intercept -1000", 0.05, 12, 0, -1000.0),
    StorageProfile("uint12 wrapped, intercept 0 (RSNA quirk)", 0.03, 12, 0, 0.0, wrapped=True),
    StorageProfile("uint12 wrapped, intercept 1 (RSNA quirk)", 0.02, 12, 0, 1.0, wrapped=True),
)

# (rows, columns) of RSNA's non-512 images, scaled with --size; a few percent of studies get one.
ODD_SHAPES_AT_512 = ((638, 490), (436, 436), (408, 404), (464, 464), (462, 462), (430, 374), (666, 666),
                     (768, 768))
ODD_SHAPE_SHARE = 0.06


def apportion(shares: list[float], count: int, rng: np.random.Generator) -> np.ndarray:
    """Assign `count` items to categories in proportion to `shares` (largest remainder), in random order.

    Unlike independent draws this guarantees every category with share * count >= 0.5 shows up.
    """
    shares_arr = np.asarray(shares, dtype=float) / sum(shares)
    exact = shares_arr * count
    counts = np.floor(exact).astype(int)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: count - counts.sum()]] += 1
    assignment = np.repeat(np.arange(len(shares)), counts)
    rng.shuffle(assignment)
    return assignment


SHARPENED_DETAIL_HU = 30.0


def motion_blur(image: np.ndarray, length_px: float, angle: float) -> np.ndarray:
    """Average of the image along a line `length_px` long at `angle`: the head moved during the rotation."""
    half = int(np.ceil(length_px / 2))
    kernel = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float32)
    for t in np.linspace(-length_px / 2, length_px / 2, 2 * half + 1):
        kernel[int(round(half + t * np.sin(angle))), int(round(half + t * np.cos(angle)))] += 1.0
    return ndimage.convolve(image, kernel / kernel.sum(), mode="nearest")


def noise_field(rng: np.random.Generator, shape: tuple[int, int], texture: str, grain_px: float) -> np.ndarray:
    """Unit-variance noise with the spectrum of a reconstruction: white, low-pass (smooth kernels, iterative
    reconstruction) or high-pass (sharp kernels)."""
    white = rng.standard_normal(shape, dtype=np.float32)
    if texture == "white":
        return white
    if texture == "filtered":
        field = ndimage.gaussian_filter(white, grain_px)
    elif texture == "high-pass":
        field = white - ndimage.gaussian_filter(white, grain_px)
    else:
        raise ValueError(f"unknown noise texture {texture!r}")
    return field / field.std()


def add_scanner_effects(hu: np.ndarray, bone: np.ndarray, rng: np.random.Generator, scan: Nuisance,
                        pixel_mm: float, skull_base: bool) -> np.ndarray:
    """What the scanner does to the true densities, in order: calibration (offset and slope about water, on
    every pixel), patient motion, the reconstruction kernel, quantum noise, beam-hardening cupping and streaks."""
    rows, cols = hu.shape
    out = scan.hu_offset + scan.hu_scale * hu
    if scan.motion_mm > 0:
        out = motion_blur(out, scan.motion_mm / pixel_mm, scan.motion_angle)
    if scan.sharpening:  # unsharp mask; a negative amount blurs
        # Detail clipped to soft-tissue contrast: a bone edge would otherwise ring hundreds of HU into the brain.
        detail = np.clip(out - ndimage.gaussian_filter(out, 1.0), -SHARPENED_DETAIL_HU, SHARPENED_DETAIL_HU)
        out = out + scan.sharpening * detail
    out = out + scan.noise_hu * noise_field(rng, hu.shape, scan.noise_texture, scan.noise_grain_px)
    head = ndimage.binary_fill_holes(bone)
    if head.any():
        yy, xx = np.nonzero(head)
        cy, cx = yy.mean(), xx.mean()
        radius = np.sqrt(head.sum() / np.pi)
        rows_from_centre = (np.arange(rows, dtype=np.float32) - cy)[:, None]
        cols_from_centre = (np.arange(cols, dtype=np.float32) - cx)[None, :]
        r2 = (rows_from_centre**2 + cols_from_centre**2) / radius**2
        out -= scan.cupping_hu * rng.uniform(0.5, 1.0) * np.clip(1.0 - r2, 0.0, 1.0) * head
        if skull_base or scan.streak_extent == "everywhere":
            for _ in range(scan.streak_count):
                angle = rng.uniform(0, np.pi)
                offset = rng.normal(0.0, radius * 0.25)
                distance = cols_from_centre * np.sin(angle) - rows_from_centre * np.cos(angle) - offset
                amplitude = rng.choice([-1.0, 1.0]) * scan.streak_hu * rng.uniform(0.5, 1.0)
                out += amplitude * np.exp(-((distance * pixel_mm / 0.7) ** 2)) * head
    return out


def rsna_id(rng: np.random.Generator, hex_digits: int, taken: set[str]) -> str:
    """A fresh `ID_<hex>` identifier, as RSNA's anonymisation writes them."""
    while True:
        value = "ID_" + "".join(rng.choice(list("0123456789abcdef"), size=hex_digits))
        if value not in taken:
            taken.add(value)
            return value


@dataclass(frozen=True)
class SeriesHeader:
    """Tags shared by all slices of a series."""

    patient_id: str
    study_uid: str
    series_uid: str
    rows: int
    cols: int
    pixel_mm: float
    profile: StorageProfile
    orientation: tuple[float, ...]
    window_center: list[float]
    window_width: list[float]


def write_slice(path: Path, header: SeriesHeader, image_id: str, position: tuple[float, float, float],
                stored: np.ndarray) -> None:
    """Write one CT slice with the tags RSNA's files carry (and nothing identifying)."""
    # RSNA writes `ID_<hex>` where DICOM wants numeric UIDs: no warning on every file.
    with pydicom.config.disable_value_validation():
        _write_slice(path, header, image_id, position, stored)


def _write_slice(path: Path, header: SeriesHeader, image_id: str, position: tuple[float, float, float],
                 stored: np.ndarray) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = image_id
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(IMPLEMENTATION_UID + ".", entropy_srcs=["ich synth"])
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = image_id
    ds.Modality = "CT"
    ds.PatientID = header.patient_id
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.StudyID = ""
    ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6g}" for v in header.orientation]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [f"{header.pixel_mm:.6g}", f"{header.pixel_mm:.6g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = header.profile.bits_stored
    ds.HighBit = header.profile.bits_stored - 1
    ds.PixelRepresentation = header.profile.pixel_representation
    ds.WindowCenter = header.window_center if len(header.window_center) > 1 else header.window_center[0]
    ds.WindowWidth = header.window_width if len(header.window_width) > 1 else header.window_width[0]
    ds.RescaleIntercept = f"{header.profile.rescale_intercept:g}"
    ds.RescaleSlope = "1"
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)



def as_scanner_writes(images: Path, out: Path, tags: dict[str, str] | None = None) -> dict[str, list[Path]]:
    """The synthetic slices under `images` written again into `out/<study UID>/` as a scanner writes them: DICOM
    UIDs (numbers derived from each `ID_<hex>`) where RSNA's anonymisation left IDs, and `tags` (a patient's name,
    say) set on every slice; study UID -> its files. What `ich serve`'s tests and benchmark send."""
    studies: dict[str, list[Path]] = {}
    with pydicom.config.disable_value_validation():
        for path in sorted(Path(images).glob("*.dcm")):
            ds = pydicom.dcmread(path)
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
                setattr(ds, keyword, generate_uid(entropy_srcs=[str(getattr(ds, keyword))]))
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            for keyword, value in (tags or {}).items():
                setattr(ds, keyword, value)
            target = Path(out) / ds.StudyInstanceUID / f"{ds.SOPInstanceUID}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(target, enforce_file_format=True)
            studies.setdefault(ds.StudyInstanceUID, []).append(target)
    return dict(sorted(studies.items()))
