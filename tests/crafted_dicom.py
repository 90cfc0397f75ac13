"""Crafted DICOM files for the tests: decompression bombs, a few KB that declare 40000 x 40000 pixels, and a deflated
data set of about 1 MB that inflates to 1 GB."""

from __future__ import annotations

import io
import struct
import zlib

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

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


def deflated(ds: pydicom.Dataset) -> bytes:
    """`ds` as Deflated Explicit VR Little Endian, as pydicom writes it."""
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return dataset_bytes(ds)


def deflate_bomb(ds: pydicom.Dataset, inflated_bytes: int = 1 << 30) -> bytes:
    """`ds` deflated, with a Data Set Trailing Padding element (FFFC,FFFC) of `inflated_bytes` zeros after the
    pixels: about 1 MB per GB inflated, compressed here a chunk at a time."""
    plain = deflated(ds)
    # Preamble and DICM (132 bytes), then (0002,0000) UL: 12 bytes holding the length of the rest of the meta.
    meta_end = 132 + 12 + struct.unpack_from("<I", plain, 132 + 8)[0]
    body = zlib.decompress(plain[meta_end:], -zlib.MAX_WBITS)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [plain[:meta_end], compressor.compress(body),
             compressor.compress(struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, inflated_bytes))]
    zeros = bytes(1 << 22)
    for _ in range(inflated_bytes // len(zeros)):
        parts.append(compressor.compress(zeros))
    parts += [compressor.compress(bytes(inflated_bytes % len(zeros))), compressor.flush()]
    return b"".join(parts)


BOMBS = {"jpeg2000": jpeg2000_bomb, "jpeg2000_header_too": lambda ds: jpeg2000_bomb(ds, header_too=True),
         "jpeg_ls": jpeg_ls_bomb, "rle": rle_bomb, "deflate": deflate_bomb}
