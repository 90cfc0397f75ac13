"""Transform step speed, and the storage decision for transformed images, measured in one run.

    .venv/bin/python bench/transform.py [--patients 12] [--slices-per-study 16] [--size 512]

Speed: slices/s of the transform graph (parse the raw Examples, HU, windows, resize; batches of 32) against
the numpy reference loop (pydicom read, HU, windows, resize) on the same slices, as a ratio. Goal: >= 0.5x.

Storage: bytes per slice and slices/s of each way to feed the Trainer:
  raw (materialize=False)   the ingested Examples, transformed in the Trainer's input pipeline every epoch;
  float32 materialized      the 256x256x3 float32 image written by Transform (gzip TFRecords);
  uint8 materialized        the image quantised to 1/255 steps (error <= 0.5/255 per channel).
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import results_path, write_results  # noqa: E402 - after the path is set

BATCH = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--slices-per-study", type=int, default=16)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json", type=Path, default=results_path("transform"))
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from bench.ingest import executor_once
    from components.dicom_example_gen.tfrecord_sink import GZIP_LEVEL
    from ich_model import reference
    from ich_model.constants import CHANNELS, MODEL_INPUT_SIZE
    from ich_model.examples import IMAGE_ID, RAW_FEATURE_SPEC
    from ich_model.preprocessing import images_from_raw
    from ich_model.synth import IMAGES_DIR, generate_dataset

    with tempfile.TemporaryDirectory(prefix="ich-bench-transform-") as tmp:
        tmp_path = Path(tmp)
        print(f"generating and ingesting {args.patients} patients x {args.slices_per_study} slices at "
              f"{args.size} px ...", flush=True)
        generate_dataset(tmp_path / "set", args.patients, args.slices_per_study, seed=103, size=args.size,
                         progress=False)
        executor_once(str(tmp_path / "set"), str(tmp_path / "examples"), ["--direct_running_mode=in_memory"])
        raw_files = sorted(str(p) for p in (tmp_path / "examples").glob("Split-*/*.gz"))
        records = [r.numpy() for r in tf.data.TFRecordDataset(raw_files, compression_type="GZIP")]
        n = len(records)
        dicom_dir = tmp_path / "set" / IMAGES_DIR

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def transform(serialized):
            return images_from_raw(tf.io.parse_example(serialized, RAW_FEATURE_SPEC))

        def graph_pass() -> tuple[float, dict]:
            start = time.perf_counter()
            images = {}
            for i in range(0, n, BATCH):
                batch = records[i:i + BATCH]
                out = transform(tf.constant(batch)).numpy()
                for record, image in zip(batch, out, strict=True):
                    image_id = tf.train.Example.FromString(record).features.feature[IMAGE_ID].bytes_list.value[0]
                    images[image_id.decode()] = image
            return time.perf_counter() - start, images

        def numpy_pass() -> float:
            start = time.perf_counter()
            for path in sorted(dicom_dir.glob("*.dcm")):
                reference.preprocess_file(path)
            return time.perf_counter() - start

        graph_pass()  # trace the function and warm the page cache before timing
        numpy_pass()
        graph_s, images = graph_pass()
        numpy_s = numpy_pass()
        check = sorted(images)[:5]
        worst = max(float(np.abs(images[i] - reference.preprocess_file(dicom_dir / f"{i}.dcm")).max()) for i in check)

        raw_bytes = sum(os.path.getsize(f) for f in raw_files) / n
        stack = np.stack(list(images.values()))
        float_records = [tf.train.Example(features=tf.train.Features(feature={
            "image": tf.train.Feature(float_list=tf.train.FloatList(value=image.ravel()))})).SerializeToString()
            for image in stack]
        quantised = np.round(stack * 255).astype(np.uint8)
        uint8_error = float(np.abs(quantised / 255.0 - stack).max())
        uint8_records = [tf.train.Example(features=tf.train.Features(feature={
            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[q.tobytes()]))})).SerializeToString()
            for q in quantised]
        sizes = {"float32": sum(len(gzip.compress(r, GZIP_LEVEL)) for r in float_records) / n,
                 "uint8": sum(len(gzip.compress(r, GZIP_LEVEL)) for r in uint8_records) / n}

        def read_rate(recs, parse) -> float:
            start = time.perf_counter()
            for i in range(0, n, BATCH):
                parse(tf.constant(recs[i:i + BATCH])).numpy()
            return n / (time.perf_counter() - start)

        float_spec = {"image": tf.io.FixedLenFeature([MODEL_INPUT_SIZE * MODEL_INPUT_SIZE * CHANNELS], tf.float32)}
        uint8_spec = {"image": tf.io.FixedLenFeature([], tf.string)}
        parse_float = tf.function(lambda s: tf.io.parse_example(s, float_spec)["image"])
        parse_uint8 = tf.function(lambda s: tf.cast(tf.io.decode_raw(tf.io.parse_example(s, uint8_spec)["image"],
                                                                   tf.uint8), tf.float32) / 255.0)
        read_rate(float_records, parse_float)
        read_rate(uint8_records, parse_uint8)
        results = {
            "slices": n, "size_px": args.size, "cpu_count": os.cpu_count(),
            "graph_slices_per_s": n / graph_s, "numpy_slices_per_s": n / numpy_s,
            "graph_vs_numpy": numpy_s / graph_s, "graph_max_abs_diff_vs_numpy": worst,
            "bytes_per_slice": {"raw (materialize=False)": raw_bytes, "float32 materialized": sizes["float32"],
                                "uint8 materialized": sizes["uint8"]},
            "feed_slices_per_s": {"raw (materialize=False)": n / graph_s,
                                  "float32 materialized": read_rate(float_records, parse_float),
                                  "uint8 materialized": read_rate(uint8_records, parse_uint8)},
            "uint8_max_error": uint8_error,
        }

    print(f"\n{n} slices of {args.size} px, {os.cpu_count()} cores")
    print(f"  transform graph {results['graph_slices_per_s']:.1f} slices/s, numpy reference "
          f"{results['numpy_slices_per_s']:.1f} slices/s: {results['graph_vs_numpy']:.2f}x (goal >= 0.5x); "
          f"max |graph - numpy| {worst:.1e}")
    print(f"  {'feeding the Trainer':<26} {'bytes/slice':>12} {'slices/s':>10}")
    for key, size in results["bytes_per_slice"].items():
        print(f"  {key:<26} {size:12,.0f} {results['feed_slices_per_s'][key]:10.1f}")
    print(f"  uint8 quantisation error: {uint8_error:.5f} (1/255 = {1 / 255:.5f})")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
