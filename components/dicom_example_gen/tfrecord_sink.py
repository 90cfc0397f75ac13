"""The DicomExampleGen's split writer: gzipped TFRecord files written as the Examples stream in.

TFX's own WriteSplit reshuffles before writing, which on the direct runner holds every Example of a split, pixels
included, in memory at once. `write_split_records` writes each Example as it arrives instead, through Beam's
`fileio.WriteToFiles` and a sink that frames records as TFRecord does (length, its checksum, data, its checksum)
inside a gzip stream: files that TFX's readers detect by their `.gz` suffix and read as `tfrecords_gzip`.
"""

from __future__ import annotations

import gzip
import struct

import apache_beam as beam
import google_crc32c
from apache_beam.io import fileio
from apache_beam.options.value_provider import StaticValueProvider
from tfx.components.example_gen.write_split import MaybeSerialize

# The fastest level: higher ones barely shrink a slice's pixels further and cost many times the DICOM read
# (bench/ingest.py; docs/decisions.md#streaming-writes-gzip-level-1-hardware-crc-32c).
GZIP_LEVEL = 1


def _masked_crc32c(data: bytes) -> bytes:
    """TFRecord's checksum: CRC-32C, rotated and offset ("masked"), little-endian."""
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


class _GzipTFRecordSink(fileio.FileSink):
    """TFRecord framing (length, its checksum, data, its checksum) inside a gzip stream, at a compression level
    chosen for speed (see GZIP_LEVEL)."""

    def open(self, fh):
        self._file = gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)

    def write(self, record: bytes):
        length = struct.pack("<Q", len(record))
        self._file.write(length + _masked_crc32c(length))
        self._file.write(record)
        self._file.write(_masked_crc32c(record))

    def flush(self):
        self._file.close()  # writes the gzip trailer; fileio closes the underlying file


@beam.ptransform_fn
def write_split_records(examples: beam.PCollection, split_uri: str, temp_dir: str):
    """Write one split's Examples (protos or serialized) under `split_uri` as `data_tfrecord-*.gz` files, each
    Example as it arrives; `temp_dir` holds the files until they are complete."""
    return (examples
            | "Serialize" >> beam.ParDo(MaybeSerialize())
            | "Write" >> fileio.WriteToFiles(
                split_uri, file_naming=fileio.default_file_naming("data_tfrecord", ".gz"),
                sink=lambda _: _GzipTFRecordSink(),
                temp_directory=StaticValueProvider(str, temp_dir)))
