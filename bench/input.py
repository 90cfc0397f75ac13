"""The Trainer's input pipeline alone: gzipped raw Examples -> balanced, transformed, augmented batches.

    .venv/bin/python bench/input.py [--pipeline-root build/pipeline] [--batches 15]

From the latest run's train split and transform graph (`make run` first), with the cache off as the GPU presets
run it, for member A's recipe (two draws per subtype in a batch) and member C's (four per hard subtype):

- training images/s through the sampler (`ich_model.members.training_batches`), its positive streams reading
  the ExampleGen's positive folders, on one core and on two (tf.data's private thread pool); at the demo mix also
  the sampler as it was, each positive stream filtering the whole split (at RSNA's prevalence only computed:
  filling its buffers there takes minutes);
- the raw Examples read and parsed per training image (counted at the record reader);
- the floor: inflating and parsing as many records without the sampler, the transform or the augmentation.

Twice: at the demo set's own mix, and at RSNA's slice prevalence (the train split's records resampled, with
replacement, to epidural 0.42%, intraparenchymal 4.8%, intraventricular 3.5%, subarachnoid 4.7%, subdural 6.3%).
Goal (for a GPU node): at RSNA's prevalence, at most 1.2 raw Examples read per training image and at least 150
training images/s per core.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import results_path, write_results  # noqa: E402 - after the path is set

# RSNA 2019 stage-2 training slices: the share positive for each subtype (project order without `any`).
RSNA_SLICE_PREVALENCE = {"epidural": 0.0042, "intraparenchymal": 0.048, "intraventricular": 0.035,
                         "subarachnoid": 0.047, "subdural": 0.063}
RESAMPLED_RECORDS = 3000
READS_GOAL, RATE_PER_CORE_GOAL = 1.2, 150.0
# Member -> the core counts its sampler is timed on.
MEASURED = {"a": (1, 2), "c": (1,)}
FILTER_MEASURED = ("demo mix",)  # at RSNA's prevalence filling its buffers takes minutes; computed instead


def resampled_to(records: list[bytes], labels, prevalence: dict, count: int, seed: int = 0) -> list[bytes]:
    """`count` of `records` drawn with replacement, weighted (by iterative proportional fitting) so that each
    subtype's share of positives is `prevalence`'s."""
    import numpy as np

    from ich_model.constants import LABELS

    weights = np.ones(len(records))
    columns = {name: labels[:, LABELS.index(name)].astype(bool) for name in prevalence}
    for _ in range(200):
        for name, target in prevalence.items():
            positive = columns[name]
            share = weights[positive].sum() / weights.sum()
            if share > 0:
                # Scale the positives so that their share becomes the target, the rest so that the total stays.
                weights[positive] *= target / share
                weights[~positive] *= (1 - target) / (1 - share)
    picks = np.random.default_rng(seed).choice(len(records), size=count, p=weights / weights.sum())
    return [records[i] for i in picks]


def write_examples(folder: Path, records: list[bytes]) -> tuple[list[str], dict[int, list[str]]]:
    """`records` as one train split under `folder`, with each subtype's positives in the ExampleGen's positive
    folders. Returns the split's files and, per subtype index, its positives' files."""
    import numpy as np
    import tensorflow as tf

    from ich_model.constants import NUM_LABELS, SUBTYPES
    from ich_model.examples import LABEL, TRAIN_SPLIT, positives_uri

    def write(directory: Path, group: list[bytes]) -> list[str]:
        directory.mkdir(parents=True)
        if not group:
            return []
        with tf.io.TFRecordWriter(str(directory / "data.gz"), options="GZIP") as writer:
            for record in group:
                writer.write(record)
        return [str(directory / "data.gz")]

    spec = {LABEL: tf.io.FixedLenFeature([NUM_LABELS], tf.int64)}
    labels = np.array([tf.io.parse_single_example(r, spec)[LABEL].numpy() for r in records])
    positives = {index: write(Path(positives_uri(str(folder), TRAIN_SPLIT, subtype)),
                              [r for r, row in zip(records, labels, strict=True) if row[index]])
                 for index, subtype in enumerate(SUBTYPES)}
    return write(folder / f"Split-{TRAIN_SPLIT}", records), positives


def filter_reads_per_image(prevalence) -> float:
    """Raw Examples read per training image by a sampler whose positive streams filter the split (member A's
    two draws per subtype): 1/prevalence per positive draw, one per other draw."""
    from ich_model.constants import BATCH_SIZE, SUBTYPES
    from ich_model.members import POSITIVE_DRAWS

    present = [p for p in prevalence[:len(SUBTYPES)] if p > 0]
    positive_draws = POSITIVE_DRAWS * len(present)
    return (POSITIVE_DRAWS * sum(1 / p for p in present) + BATCH_SIZE - positive_draws) / BATCH_SIZE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-root", default=str(ROOT / "build" / "pipeline"))
    parser.add_argument("--pipeline-name", default="ich")
    parser.add_argument("--examples", help="an Examples artifact's folder (default: the latest run's)")
    parser.add_argument("--transform-graph", help="a transform graph's folder (default: the latest run's)")
    parser.add_argument("--batches", type=int, default=15, help="timed batches per measurement (after one)")
    parser.add_argument("--json", type=Path, default=results_path("input"))
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf
    import tensorflow_transform as tft

    from bench.quality import latest_run
    from ich_model.constants import BATCH_SIZE, LABELS, NUM_LABELS
    from ich_model.examples import LABEL
    from ich_model.members import MEMBERS, training_batches
    from ich_model.preprocessing import IMAGE

    if args.examples and args.transform_graph:
        examples_uri, transform_graph_uri = args.examples, args.transform_graph
    else:
        run = latest_run(args.pipeline_root, args.pipeline_name)
        examples_uri = run["trainer_inputs"]["examples"][0].uri
        transform_graph_uri = run["trainer_inputs"]["transform_graph"][0].uri
    train_files = tf.io.gfile.glob(os.path.join(examples_uri, "Split-train", "*.gz"))
    tft_output = tft.TFTransformOutput(transform_graph_uri)
    raw_spec = tft_output.raw_feature_spec()
    tft_layer = tft_output.transform_features_layer()
    label_spec = {LABEL: tf.io.FixedLenFeature([NUM_LABELS], tf.int64)}

    records = [r.numpy() for r in tf.data.TFRecordDataset(train_files, compression_type="GZIP")]
    labels = np.array([tf.io.parse_single_example(r, label_spec)[LABEL].numpy() for r in records])
    work = Path(tempfile.mkdtemp(prefix="ich-input-bench-"))
    resampled = resampled_to(records, labels, RSNA_SLICE_PREVALENCE, RESAMPLED_RECORDS)
    # Each set as the ExampleGen writes it: the split, and each subtype's positives in a folder of their own.
    sets = {"demo mix": write_examples(work / "demo", records),
            "RSNA prevalence": write_examples(work / "rsna", resampled)}
    del records, resampled

    def raw_stream(files, counter):
        """Unbatched (raw features, label) pairs as the Trainer reads them, counting every record read."""
        def parse(record):
            counter.assign_add(1)
            features = tf.io.parse_single_example(record, raw_spec)
            return features, tf.cast(tf.reshape(features[LABEL], [NUM_LABELS]), tf.float32)
        return tf.data.TFRecordDataset(files, compression_type="GZIP").map(parse)

    def with_threads(dataset, cores: int):
        options = tf.data.Options()
        options.threading.private_threadpool_size = cores
        return dataset.with_options(options)

    def timed(dataset, batches: int, counter) -> tuple[float, int]:
        """Seconds for `batches` batches of `dataset`, and the records `counter` saw read meanwhile."""
        iterator = iter(dataset)
        next(iterator)  # the first batch builds the graph and fills the buffers
        before = int(counter.numpy())
        start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        return time.perf_counter() - start, int(counter.numpy()) - before

    def member_rate(recipe, files, positive_files, prevalence, cores: int) -> dict:
        counter = tf.Variable(0, dtype=tf.int64)
        positives = None if positive_files is None else {
            index: raw_stream(group, counter) for index, group in positive_files.items() if group}
        batches = with_threads(training_batches(
            raw_stream(files, counter), recipe, prevalence, BATCH_SIZE, seed=1,
            to_images=lambda features: tft_layer(features)[IMAGE], positives=positives), cores)
        seconds, reads = timed(batches, args.batches, counter)
        images = args.batches * BATCH_SIZE
        # Prefetching reads ahead of what was taken: the count is an upper bound by a few batches.
        return {"images_per_s": images / seconds, "raw_reads_per_image": reads / images}

    results = {"batch_size": BATCH_SIZE, "timed_batches": args.batches, "reads_goal": READS_GOAL,
               "rate_per_core_goal": RATE_PER_CORE_GOAL, "sets": {}}
    for set_name, (files, positive_files) in sets.items():
        set_labels = np.array([tf.io.parse_single_example(r, label_spec)[LABEL].numpy()
                               for r in tf.data.TFRecordDataset(files, compression_type="GZIP")])
        prevalence = set_labels.mean(axis=0)
        entry = {"examples": int(len(set_labels)),
                 "prevalence": {name: float(p) for name, p in zip(LABELS, prevalence, strict=True)},
                 "filter_reads_per_image_computed": filter_reads_per_image(prevalence), "members": {}}
        print(f"{set_name}: {len(set_labels)} raw Examples, prevalence "
              + ", ".join(f"{name} {p:.2%}" for name, p in zip(LABELS, prevalence, strict=True)), flush=True)
        for cores in (1, 2):
            counter = tf.Variable(0, dtype=tf.int64)
            floor = with_threads(raw_stream(files, counter).repeat().batch(BATCH_SIZE), cores)
            seconds, _ = timed(floor, args.batches, counter)
            entry[f"floor_images_per_s_{cores}_cores"] = args.batches * BATCH_SIZE / seconds
            print(f"  floor (inflate and parse only), {cores} core(s): "
                  f"{entry[f'floor_images_per_s_{cores}_cores']:.0f} records/s", flush=True)
        for member, cores_measured in MEASURED.items():
            row = {}
            for cores in cores_measured:
                measured = member_rate(MEMBERS[member], files, positive_files, prevalence, cores)
                row[f"images_per_s_{cores}_cores"] = measured["images_per_s"]
                row["raw_reads_per_image"] = max(row.get("raw_reads_per_image", 0), measured["raw_reads_per_image"])
            entry["members"][member] = row
            rates = ", ".join(f"{row[f'images_per_s_{cores}_cores']:.0f} on {cores}" for cores in cores_measured)
            print(f"  member {member}, positive folders: images/s {rates} core(s); "
                  f"{row['raw_reads_per_image']:.2f} raw Examples read per training image", flush=True)
        if set_name in FILTER_MEASURED:
            # The sampler as it was: each subtype's stream filters the whole split.
            entry["filter"] = member_rate(MEMBERS["a"], files, None, prevalence, 1)
            print(f"  member a, filtering the split (before): images/s {entry['filter']['images_per_s']:.0f} on 1 "
                  f"core; {entry['filter']['raw_reads_per_image']:.2f} raw Examples read per training image "
                  f"(computed {entry['filter_reads_per_image_computed']:.2f})", flush=True)
        else:
            print(f"  member a, filtering the split (before), computed: "
                  f"{entry['filter_reads_per_image_computed']:.2f} raw Examples read per training image", flush=True)
        results["sets"][set_name] = entry
    rsna_rows = results["sets"]["RSNA prevalence"]["members"].values()
    results["goal_met"] = all(row["raw_reads_per_image"] <= READS_GOAL
                              and row["images_per_s_1_cores"] >= RATE_PER_CORE_GOAL for row in rsna_rows)
    print(f"at RSNA's prevalence: <= {READS_GOAL} raw Examples per image and >= {RATE_PER_CORE_GOAL:.0f} images/s "
          f"per core: {'met' if results['goal_met'] else 'missed'}")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
