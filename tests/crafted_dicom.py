"""Crafted DICOM files for the tests: decompression bombs, a few KB that declare 40000 x 40000 pixels."""

from __future__ import annotations

import io
import struct

import pydicom
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

BOMB_SIDE = 40000  # 1.6 billion pixels: 3.2 GB as 16-bit, more in a decoder's buffers


def dataset_bytes(ds: pydicom.Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _patched_pixel_data(ds: pydicom.Dataset, marker: bytes, offset: int, layout: str, *values: int) -> None:
    data = bytearray(ds.PixelData)
    at = data.find(marker)
    assert at >= 0, f"no {marker!r} marker in the compressed frame"
    struct.pack_into(layout, data, at + offset, *values)
    ds.PixelData = bytes(data)


def jpeg2000_bomb(ds: pydicom.Dataset, header_too: bool = False) -> bytes:
    """`ds` compressed as JPEG 2000 whose codestream (SIZ: image and tile size) declares BOMB_SIDE a side; with
    `header_too` the DICOM header declares it as well."""
    ds.compress(JPEG2000Lossless)
    # After SOC and the SIZ marker: Lsiz, Rsiz (2 bytes each), then Xsiz, Ysiz, XOsiz, YOsiz, XTsiz, YTsiz.
    _patched_pixel_data(ds, b"\xff\x4f\xff\x51", 8, ">6I", BOMB_SIDE, BOMB_SIDE, 0, 0, BOMB_SIDE, BOMB_SIDE)
    if header_too:
        ds.Rows = ds.Columns = BOMB_SIDE
    return dataset_bytes(ds)


def jpeg_ls_bomb(ds: pydicom.Dataset) -> bytes:
    """`ds` compressed as JPEG-LS whose frame header (SOF55: length, precision, lines, samples per line) declares
    BOMB_SIDE a side."""
    ds.compress(JPEGLSLossless)
    _patched_pixel_data(ds, b"\xff\xf7", 5, ">2H", BOMB_SIDE, BOMB_SIDE)
    return dataset_bytes(ds)


def rle_bomb(ds: pydicom.Dataset) -> bytes:
    """`ds` as RLE with a header that declares BOMB_SIDE a side: RLE segments decode to the header's size."""
    ds.compress(RLELossless)
    ds.Rows = ds.Columns = BOMB_SIDE
    return dataset_bytes(ds)


BOMBS = {"jpeg2000": jpeg2000_bomb, "jpeg2000_header_too": lambda ds: jpeg2000_bomb(ds, header_too=True),
         "jpeg_ls": jpeg_ls_bomb, "rle": rle_bomb}
