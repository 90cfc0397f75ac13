"""Reading one CT slice from DICOM: stored pixels, corrected rescale tags and the metadata the pipeline uses.

Only the tags listed in `CtSlice` are read out; nothing identifying (names, dates, accession numbers,
institutions, physicians) ever leaves this module.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

PREAMBLE_LENGTH = 128
DICM = b"DICM"
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")

# The stored values travel as little-endian int16: every CT scale (12- or 16-bit, signed or unsigned with
# values below 32768) fits. Unsigned data above 32767 is shifted by this offset, intercept adjusted.
PIXEL_DTYPE = np.dtype("<i2")
UNSIGNED_SHIFT = 32768
# A transfer writes this file into a folder once every slice is there; it and these names are never slices.
READY_MARKER = "_READY"
IGNORED_NAMES = (READY_MARKER, "_SUCCESS", "Thumbs.db", "DICOMDIR")
# Header-only reads leave values larger than this (the pixel data) on disk.
DEFER_BYTES = 4096
# What a CT slice can hold: a modality LUT slope in (0, MAX_RESCALE_SLOPE] (scanners write 1, a few 0.5 or 2), and
# Hounsfield units within HU_RANGE (air is -1000, scanners pad down to -3024, extended scales reach about 30,700
# for metal). Outside them a file's tags are wrong, and its pixels would reach the model as nonsense.
MAX_RESCALE_SLOPE = 16.0
HU_RANGE = (-8192.0, 32767.0)
MAX_PIXEL_SPACING_MM = 10.0  # a head CT pixel is about 0.5 mm
# A CT slice is 512 pixels a side (RSNA: 408 to 768). A file that declares more is no slice, or a decompression bomb:
# a few KB of JPEG 2000, JPEG-LS or RLE can declare 40000 x 40000 pixels, gigabytes once decoded.
MAX_IMAGE_SIDE = 4096
# JPEG start-of-frame markers (ITU T.81 B.1.1.3: C0-CF but C4, C8, CC; JPEG-LS: F7), each followed by its
# length, the sample precision, then the number of lines and of samples per line.
# A deflated data set (Deflated Explicit VR Little Endian) is inflated whole before it is parsed, and deflate reaches
# about 1000:1: a 1 MB file can inflate to 1 GB. A slice of MAX_IMAGE_SIDE a side at 16 bits, with room for its tags.
MAX_INFLATED_BYTES = 2 * MAX_IMAGE_SIDE**2 + (1 << 20)
_INFLATE_CHUNK = 1 << 16
_SOF_MARKERS = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7})
_J2K_SIZ = b"\xff\x4f\xff\x51"  # SOC then SIZ (ISO 15444-1 A.5.1): Lsiz, Rsiz, Xsiz, Ysiz, XOsiz, YOsiz, ...


class DicomRejected(Exception):
    """A file that is not a usable CT slice. `reason` is a short machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class CtSlice:
    """One axial CT slice: stored pixels and everything needed to turn them into Hounsfield units."""

    image_id: str  # SOPInstanceUID; RSNA's file names are this value
    patient_id: str
    study_uid: str
    series_uid: str
    pixels: np.ndarray  # stored values (after the RSNA wrapped-pixel fix), int16, shape (rows, columns)
    rescale_slope: float
    rescale_intercept: float
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, ...] | None
    pixel_spacing_mm: float  # row spacing; 0 when the file has none
    bits_stored: int
    intercept_group: str  # the intercept as written, or "wrapped" for the RSNA 12-bit quirk
    window_center: float | None  # first value where the tag is multi-valued
    window_width: float | None
    warnings: tuple[str, ...] = field(default=())

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def image_size(self) -> str:
        return f"{self.height}x{self.width}"

    @property
    def z_position(self) -> float:
        """Position along the patient's feet-head axis (ImagePositionPatient[2]); NaN when unknown."""
        return self.image_position[2] if self.image_position else math.nan

    @property
    def slice_position_mm(self) -> float:
        return position_along_normal(self.image_position, self.image_orientation)

    def hounsfield_units(self) -> np.ndarray:
        return self.pixels.astype(np.float64) * self.rescale_slope + self.rescale_intercept


def _open(source: str | os.PathLike | bytes, defer_pixels: bool = False) -> pydicom.Dataset:
    """Parse a Part 10 file; with `defer_pixels` the pixel data (of a path) is not read, only noted."""
    if isinstance(source, bytes | bytearray):
        raw_head, stream = bytes(source[: PREAMBLE_LENGTH + len(DICM)]), io.BytesIO(source)
    elif printable_path(source) != os.fspath(source):
        raise DicomRejected("bad_file_name", "the file name is not valid UTF-8 (its bytes are shown as \\xNN): "
                                             "rename the file")
    else:
        with open(source, "rb") as f:
            raw_head = f.read(PREAMBLE_LENGTH + len(DICM))
        stream = source
    if not raw_head:
        raise DicomRejected("not_dicom", "empty file")
    if raw_head[PREAMBLE_LENGTH:] != DICM:
        raise DicomRejected("not_dicom", "no 'DICM' marker after the 128-byte preamble: not a DICOM file")
    _check_inflated_size(source)
    try:
        return pydicom.dcmread(stream, defer_size=DEFER_BYTES if defer_pixels else None)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as error:
        raise DicomRejected("truncated", f"the DICOM data set ends or breaks before it is complete ({error})") \
            from error


def _check_inflated_size(source: str | os.PathLike | bytes) -> None:
    """A deflated data set that inflates past MAX_INFLATED_BYTES is rejected before pydicom inflates it whole: it is
    inflated here a chunk at a time, the output counted and dropped."""
    with (io.BytesIO(source) if isinstance(source, bytes | bytearray) else open(source, "rb")) as f:
        try:
            pydicom.filereader.read_preamble(f, False)
            # pydicom's public read_file_meta_info takes a path only; this is what it calls on the open file.
            meta = pydicom.filereader._read_file_meta_info(f)  # noqa: SLF001
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError):
            return  # dcmread gives the reason
        if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return
        inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
        pending = f.read(_INFLATE_CHUNK)
        while pending and inflated <= MAX_INFLATED_BYTES:
            try:
                inflated += len(inflater.decompress(pending, MAX_INFLATED_BYTES + 1 - inflated))
            except zlib.error:
                return  # not deflate: dcmread gives the reason
            pending = inflater.unconsumed_tail or f.read(_INFLATE_CHUNK)
    if inflated > MAX_INFLATED_BYTES:
        raise DicomRejected("inflated_too_large", f"the deflated data set inflates to more than "
                                                  f"{MAX_INFLATED_BYTES:,} bytes; a CT slice has at most "
                                                  f"{MAX_IMAGE_SIDE} x {MAX_IMAGE_SIDE} 16-bit pixels")


def stored_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """The stored pixel values, decoded from whatever transfer syntax the file uses (RLE, JPEG lossless and
    baseline, JPEG-LS, JPEG 2000 or uncompressed)."""
    try:
        return ds.pixel_array
    except ValueError as error:
        if "less than expected" in str(error) or "truncat" in str(error).lower():
            raise DicomRejected("truncated", f"pixel data shorter than the image it describes ({error})") from error
        raise DicomRejected("undecodable", f"pixel data cannot be decoded ({error})") from error
    except (NotImplementedError, RuntimeError, TypeError, AttributeError) as error:
        syntax = ds.file_meta.get("TransferSyntaxUID", "unknown") if hasattr(ds, "file_meta") else "unknown"
        raise DicomRejected("undecodable", f"no decoder for transfer syntax {syntax} ({error})") from error


def _check_single_ct_image(ds: pydicom.Dataset) -> None:
    """Reject anything but one grayscale CT image, from its header alone."""
    if "PixelData" not in ds:
        if "Rows" in ds and "Columns" in ds:  # an image header whose pixel data never comes: a cut file
            raise DicomRejected("truncated", "image header present but the file ends before its pixel data")
        raise DicomRejected("no_pixel_data", f"no pixel data ({ds.get('Modality', 'unknown modality')} object)")
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise DicomRejected("multi_frame", f"{ds.NumberOfFrames} frames in one file; expected one axial slice")
    if int(ds.get("SamplesPerPixel", 1)) != 1 or ds.get("PhotometricInterpretation", "") not in GRAYSCALE:
        raise DicomRejected("not_grayscale", f"{ds.get('PhotometricInterpretation', 'unknown')} image with "
                                             f"{ds.get('SamplesPerPixel', '?')} samples per pixel")
    modality = str(ds.get("Modality", ""))
    if modality != "CT":
        raise DicomRejected("not_ct", f"modality {modality or 'missing'}, expected CT")


def _check_declared_size(ds: pydicom.Dataset) -> None:
    """Before any pixel is decoded: the declared size is a CT slice's, and a compressed frame's own header declares
    the same size (a decoder allocates what the codestream says, not what the DICOM header says)."""
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if not (0 < rows <= MAX_IMAGE_SIDE and 0 < columns <= MAX_IMAGE_SIDE):
        raise DicomRejected("image_too_large" if max(rows, columns) > MAX_IMAGE_SIDE else "bad_image_size",
                            f"{rows} x {columns} pixels declared; a CT slice has 1 to {MAX_IMAGE_SIDE} a side")
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is None or not syntax.is_encapsulated:
        return
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    except (StopIteration, ValueError, struct.error) as error:
        raise DicomRejected("undecodable", f"no frame in the encapsulated pixel data ({error})") from None
    declared = _codestream_size(frame, syntax)
    if declared is not None and declared != (rows, columns):
        raise DicomRejected("size_mismatch", f"the {syntax.name} codestream declares {declared[0]} x {declared[1]} "
                                             f"pixels, the DICOM header {rows} x {columns}")


def _codestream_size(frame: bytes, syntax: pydicom.uid.UID) -> tuple[int, int] | None:
    """(rows, columns) that a JPEG, JPEG-LS or JPEG 2000 frame declares in its own header; None for RLE (its
    segments decode to the DICOM header's size) and other encodings. A JPEG-family frame without the header is
    undecodable."""
    if syntax.keyword.startswith(("JPEG2000", "HTJ2K")):
        at = frame.find(_J2K_SIZ)
        if at < 0 or len(frame) < at + 24:
            raise DicomRejected("undecodable", f"no {syntax.name} codestream header (SIZ marker) in the frame")
        x_size, y_size, x_origin, y_origin = struct.unpack(">4I", frame[at + 8: at + 24])
        return y_size - y_origin, x_size - x_origin
    if not syntax.keyword.startswith("JPEG"):
        return None
    at = 2  # after the start-of-image marker
    while at + 4 <= len(frame) and frame[at] == 0xFF:
        marker = frame[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
        elif marker in _SOF_MARKERS:
            if len(frame) < at + 9:
                break
            lines, samples = struct.unpack(">2H", frame[at + 5: at + 9])
            return lines, samples
        else:
            at += 2 + int.from_bytes(frame[at + 2: at + 4], "big")
    raise DicomRejected("undecodable", f"no {syntax.name} frame header (start-of-frame marker) before the scan")


def _first(value) -> float | None:
    """First value of a possibly multi-valued numeric tag (RSNA: about half the window tags hold two)."""
    if value is None or value == "":
        return None
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return float(value[0]) if len(value) else None
    return float(value)


def position_along_normal(position: tuple[float, ...] | None, orientation: tuple[float, ...] | None) -> float:
    """ImagePositionPatient projected on the slice normal (row cosines x column cosines), in mm: the coordinate
    that orders a series' slices and spaces them, a tilted gantry's included (its z positions are closer than
    its slices). Without an orientation, or with a degenerate one, the slice is taken as axial (z); NaN without
    a position."""
    if position is None:
        return math.nan
    if orientation is not None:
        normal = np.cross(orientation[:3], orientation[3:])
        length = float(np.linalg.norm(normal))
        if length > 1e-6:
            return float(np.dot(position, normal / length))
    return float(position[2])


def _floats(value, count: int) -> tuple[float, ...] | None:
    """`count` finite numbers, or None (a missing, short or non-finite tag is no value)."""
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return values if len(values) == count and all(map(math.isfinite, values)) else None


def _geometry(ds: pydicom.Dataset) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """ImagePositionPatient and ImageOrientationPatient, each None where missing or not finite."""
    return _floats(ds.get("ImagePositionPatient", ()), 3), _floats(ds.get("ImageOrientationPatient", ()), 6)


def _hu_extent(pixels: np.ndarray, slope: float, intercept: float) -> tuple[float, float]:
    return float(pixels.min()) * slope + intercept, float(pixels.max()) * slope + intercept


def _plausible(extent: tuple[float, float]) -> bool:
    return HU_RANGE[0] <= extent[0] and extent[1] <= HU_RANGE[1]


def is_ignored(name: str) -> bool:
    return name.startswith(".") or name in IGNORED_NAMES


def list_input_files(pattern: str):
    """Every file under what `pattern` matches, at any depth, in a stable order (local or remote paths). A local
    folder reached twice (a symlink loop, or two links to one folder) is walked once."""
    import tensorflow as tf  # tf.io.gfile reads gs:// and other remote paths; reading a slice needs no TensorFlow

    for match in sorted(tf.io.gfile.glob(pattern)):
        if tf.io.gfile.isdir(match):
            yield from _walk(match) if "://" in match else _walk_local(match)
        elif not is_ignored(os.path.basename(match)):
            yield match


def _walk(folder: str):
    import tensorflow as tf

    for parent, subfolders, files in tf.io.gfile.walk(folder):
        subfolders.sort()
        yield from (os.path.join(parent, name) for name in sorted(files) if not is_ignored(name))


def _walk_local(folder: str):
    """os.walk, not tf.io.gfile's, which fails on a name that is not UTF-8 and follows a symlink loop ~40 deep."""
    seen = set()
    for parent, subfolders, files in os.walk(folder, followlinks=True):
        status = os.stat(parent)
        if (status.st_dev, status.st_ino) in seen:
            subfolders.clear()
            logging.warning("%s: a folder already listed (a symlink loop?); not listed again", printable_path(parent))
            continue
        seen.add((status.st_dev, status.st_ino))
        subfolders.sort()
        yield from (os.path.join(parent, name) for name in sorted(files) if not is_ignored(name))


def printable_path(path: str | os.PathLike) -> str:
    """`path` as text that any log, CSV or JSON can hold: the bytes of a name that is not UTF-8 shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def read_slice(source: str | os.PathLike | bytes) -> CtSlice:
    """Read one CT slice from a path or bytes, or raise `DicomRejected` saying why it is unusable."""
    # RSNA writes `ID_<hex>` in UID tags: take values as they are, without a warning per file.
    with pydicom.config.disable_value_validation():
        return _read_slice(source)


def _read_slice(source: str | os.PathLike | bytes) -> CtSlice:
    ds = _open(source)
    _check_single_ct_image(ds)
    _check_declared_size(ds)
    pixels = stored_pixels(ds)
    if pixels.ndim != 2:
        raise DicomRejected("not_grayscale", f"pixel array of shape {pixels.shape}, expected rows x columns")
    warnings = []
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is None or intercept is None or slope == "" or intercept == "":
        warnings.append("missing_rescale")  # CT without a modality LUT: stored values are HU
        slope, intercept = 1.0, 0.0
    try:
        slope, intercept = float(slope), float(intercept)
    except (TypeError, ValueError):
        raise DicomRejected("bad_rescale", f"RescaleSlope {slope!r} or RescaleIntercept {intercept!r} is not a "
                                           "number") from None
    if not (math.isfinite(slope) and math.isfinite(intercept) and 0 < slope <= MAX_RESCALE_SLOPE):
        raise DicomRejected("bad_rescale", f"RescaleSlope {slope:g}, RescaleIntercept {intercept:g}: not a CT "
                                           f"modality LUT (a finite slope in (0, {MAX_RESCALE_SLOPE:g}])")
    bits_stored = int(ds.get("BitsStored", 16))
    pixel_representation = int(ds.get("PixelRepresentation", 0))
    intercept_group = f"{intercept:g}"
    pixels = pixels.astype(np.int32)
    if bits_stored == 12 and pixel_representation == 0 and intercept > -100:
        # RSNA quirk: 12-bit values wrapped round with a wrong intercept (0 or 1). HU = fixed - 1000.
        pixels = pixels + 1000
        pixels[pixels >= 4096] -= 4096
        intercept = -1000.0
        intercept_group = "wrapped"
        warnings.append("wrapped_pixels_fixed")
    extent = _hu_extent(pixels, slope, intercept) if pixels.size else None
    if extent and extent[1] > HU_RANGE[1] and pixel_representation == 0 and bits_stored == 16 \
            and pixels.max() > np.iinfo(PIXEL_DTYPE).max:
        # Signed values written with PixelRepresentation 0: air (-1000) reads as 64,536. Read as signed, they
        # may be a CT slice after all.
        as_signed = np.where(pixels > np.iinfo(PIXEL_DTYPE).max, pixels - 2 * UNSIGNED_SHIFT, pixels)
        signed_extent = _hu_extent(as_signed, slope, intercept)
        if _plausible(signed_extent):
            pixels, extent = as_signed, signed_extent
            warnings.append("signed_pixels_fixed")
    if extent and not _plausible(extent):
        low, high = extent
        raise DicomRejected("bad_rescale", f"Hounsfield units from {low:.0f} to {high:.0f} (RescaleSlope "
                                           f"{slope:g}, RescaleIntercept {intercept:g}, PixelRepresentation "
                                           f"{pixel_representation}): outside {HU_RANGE[0]:g}..{HU_RANGE[1]:g}")
    if pixels.size and pixels.max() > np.iinfo(PIXEL_DTYPE).max:
        pixels = pixels - UNSIGNED_SHIFT
        intercept += UNSIGNED_SHIFT * slope
    if pixels.size and pixels.min() < np.iinfo(PIXEL_DTYPE).min:
        raise DicomRejected("undecodable", f"stored values down to {pixels.min()} do not fit 16 bits")

    written_spacing = ds.get("PixelSpacing")
    spacing = _floats(written_spacing or (), 2)
    if written_spacing and (spacing is None or not all(0 < v <= MAX_PIXEL_SPACING_MM for v in spacing)):
        warnings.append("bad_pixel_spacing")  # left out, as when the tag is missing: nothing reads it for HU
        spacing = None
    position, orientation = _geometry(ds)
    image_id, patient_id, study_uid, series_uid = _identity(ds, source)
    return CtSlice(
        image_id=image_id,
        patient_id=patient_id,
        study_uid=study_uid,
        series_uid=series_uid,
        pixels=pixels.astype(PIXEL_DTYPE),
        rescale_slope=slope,
        rescale_intercept=intercept,
        image_position=position,
        image_orientation=orientation,
        pixel_spacing_mm=spacing[0] if spacing else 0.0,
        bits_stored=bits_stored,
        intercept_group=intercept_group,
        window_center=_first(ds.get("WindowCenter")),
        window_width=_first(ds.get("WindowWidth")),
        warnings=tuple(warnings),
    )


def _identity(ds: pydicom.Dataset, source) -> tuple[str, str, str, str]:
    """(image ID, patient ID, study UID, series UID); the image ID falls back to the file name."""
    stem = "" if isinstance(source, bytes | bytearray) else Path(source).name.removesuffix(".dcm")
    return (str(ds.get("SOPInstanceUID", "")) or stem, str(ds.get("PatientID", "")),
            str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")))


@dataclass(frozen=True)
class SliceHeader:
    """The identifying and positional tags of a slice, read without its pixels (for grouping by study)."""

    image_id: str
    patient_id: str
    study_uid: str
    series_uid: str
    z_position: float
    slice_position_mm: float  # along the slice normal (position_along_normal)


def read_header(source: str | os.PathLike | bytes) -> SliceHeader:
    """Read only what is needed to place a slice in its study, without decoding its pixels; rejects what
    `read_slice` would reject from the header alone (the pixel data itself is checked by `read_slice`)."""
    with pydicom.config.disable_value_validation():
        return _read_header(source)


def _read_header(source: str | os.PathLike | bytes) -> SliceHeader:
    ds = _open(source, defer_pixels=not isinstance(source, bytes | bytearray))
    _check_single_ct_image(ds)
    position, orientation = _geometry(ds)
    return SliceHeader(*_identity(ds, source), z_position=position[2] if position else math.nan,
                       slice_position_mm=position_along_normal(position, orientation))
