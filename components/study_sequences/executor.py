"""StudySequenceGen's Beam executor. For each split of the slice Examples:

    read --> batches of EMBEDDING_BATCH --> the ensemble's serving signature (embedding, probabilities, spread)
         --> (study, series) -> scored slice --GroupByKey--> order along the normal --> one record per series

Only the scored slices (embeddings, no pixels) are shuffled, and one series is assembled at a time. Counts come from
Beam metrics, so that the report does not read the records back.
"""

from __future__ import annotations

import json
import logging
import math
import os

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.utils import path_utils

from components.dicom_example_gen.tfrecord_sink import write_split_records
from components.ensemble.executor import EMBEDDING_BATCH
from ich_model import context
from ich_model.examples import IMAGE_ID, LABEL, PATIENT_ID, SERIES_UID, SLICE_POSITION, SPAN, STUDY_UID, Z_POSITION
from ich_model.serving import EMBEDDING, PROBABILITIES, SERVING_SIGNATURE, SPREAD

EXAMPLES_KEY = "examples"
MODEL_KEY = "model"
STUDY_SEQUENCES_KEY = "study_sequences"
REPORT_FILE = "study_sequences_report.json"
WRITE_TEMP_DIR = "write_temp"
METRICS_NAMESPACE = "StudySequenceGen"
COUNTS = ("series", "slices", "missing_positions", "duplicate_positions")


def _text(feature, name: str) -> str:
    return feature[name].bytes_list.value[0].decode() if name in feature else ""


def slice_position(feature) -> float:
    """The position along the normal; for Examples ingested before it was written, ImagePositionPatient's z."""
    for name in (SLICE_POSITION, Z_POSITION):
        if name in feature and feature[name].float_list.value:
            return float(feature[name].float_list.value[0])
    return math.nan


class _ScoreSlices(beam.DoFn):
    """A batch of serialized slice Examples -> ((study, series), (patient, span, ScoredSlice)) per slice."""

    def __init__(self, serving_dir: str):
        self._serving_dir = serving_dir

    def setup(self):
        self._model = tf.saved_model.load(self._serving_dir)  # the signature needs its object kept alive
        self._serve = self._model.signatures[SERVING_SIGNATURE]

    def process(self, batch: list[bytes]):
        outputs = self._serve(examples=tf.constant(batch))
        embeddings = outputs[EMBEDDING].numpy()
        probabilities, spreads = outputs[PROBABILITIES].numpy(), outputs[SPREAD].numpy()
        for index, record in enumerate(batch):
            feature = tf.train.Example.FromString(record).features.feature
            label = np.array(feature[LABEL].int64_list.value, np.int64) if LABEL in feature else None
            scored = context.ScoredSlice(
                image_id=_text(feature, IMAGE_ID), position_mm=slice_position(feature),
                embedding=embeddings[index].reshape(-1), probabilities=probabilities[index],
                spread=spreads[index], label=label)
            span = int(feature[SPAN].int64_list.value[0]) if SPAN in feature else 0
            yield (_text(feature, STUDY_UID), _text(feature, SERIES_UID)), (_text(feature, PATIENT_ID), span, scored)


class _SeriesRecords(beam.DoFn):
    """One series' scored slices -> its serialized record, counted under the split's metrics."""

    def __init__(self, split: str):
        self._split = split
        self._counters = {name: beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"{split}.{name}")
                          for name in COUNTS}
        self._length = beam.metrics.Metrics.distribution(METRICS_NAMESPACE, f"{split}.length")

    def process(self, element):
        (study_uid, series_uid), values = element
        values = list(values)
        patient_id, span, _ = values[0]
        series = context.order_series(scored for _, _, scored in values)
        for name, value in (("series", 1), ("slices", len(series.slices)),
                            ("missing_positions", series.missing_positions),
                            ("duplicate_positions", series.duplicate_positions)):
            self._counters[name].inc(value)
        self._length.update(len(series.slices))
        yield context.study_record(study_uid, series_uid, patient_id, span, series).SerializeToString()


def _metric_value(result) -> int:
    value = result.committed if result.committed is not None else result.attempted
    return int(value.max if hasattr(value, "max") else value)


def report_from_metrics(pipeline_result, splits: list[str]) -> dict[str, dict[str, int]]:
    """Per split: series, slices, the longest series, missing and duplicate positions."""
    report = {split: {name: 0 for name in (*COUNTS, "longest_series")} for split in splits}
    query = pipeline_result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    for result in query["counters"] + query["distributions"]:
        split, name = result.key.metric.name.split(".", 1)
        report[split]["longest_series" if name == "length" else name] = _metric_value(result)
    return report


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802 (TFX's name)
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        serving_dir = path_utils.serving_model_path(artifact_utils.get_single_uri(input_dict[MODEL_KEY]))
        outputs = output_dict[STUDY_SEQUENCES_KEY]
        sequences = artifact_utils.get_single_instance(outputs)
        splits = artifact_utils.decode_split_names(examples.split_names)
        sequences.split_names = artifact_utils.encode_split_names(splits)

        pipeline = self._make_beam_pipeline()
        for split in splits:
            source = os.path.join(artifact_utils.get_split_uri([examples], split), "*")
            _ = (pipeline
                 | f"Read[{split}]" >> beam.io.ReadFromTFRecord(source, coder=beam.coders.BytesCoder())
                 | f"Batch[{split}]" >> beam.BatchElements(min_batch_size=EMBEDDING_BATCH,
                                                           max_batch_size=EMBEDDING_BATCH)
                 | f"Score[{split}]" >> beam.ParDo(_ScoreSlices(serving_dir))
                 | f"Group[{split}]" >> beam.GroupByKey()
                 | f"Order[{split}]" >> beam.ParDo(_SeriesRecords(split))
                 | f"Write[{split}]" >> write_split_records(artifact_utils.get_split_uri(outputs, split),
                                                             os.path.join(sequences.uri, WRITE_TEMP_DIR, split)))
        result = pipeline.run()
        result.wait_until_finish()
        tf.io.gfile.rmtree(os.path.join(sequences.uri, WRITE_TEMP_DIR))
        examples_utils.set_payload_format(sequences, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(sequences, "tfrecords_gzip")

        report = report_from_metrics(result, splits)
        with tf.io.gfile.GFile(os.path.join(sequences.uri, REPORT_FILE), "w") as f:
            json.dump(report, f, indent=2)
        for split, counts in report.items():
            for name, value in counts.items():
                sequences.set_int_custom_property(f"{split}_{name}", value)
            logging.info("StudySequenceGen: %s: %d series of %d slices (longest %d); %d without a position, %d at "
                         "a duplicate position", split, counts["series"], counts["slices"], counts["longest_series"],
                         counts["missing_positions"], counts["duplicate_positions"])
        empty = [split for split, counts in report.items() if counts["series"] == 0]
        if empty:
            raise ValueError(f"split {', '.join(empty)} holds no slice Examples to build study records from")
