"""DicomExampleGen's Beam executor: folders of DICOM slices plus RSNA label CSVs -> one tf.Example per slice.

The Beam graph, for one input split pattern:

    list files (any depth) --+-- *.csv --> label rows --GroupByKey(image)--> one label vector per image
                             +-- others --> headers (no pixels) --GroupByKey(study)--> slice order per study
    CoGroupByKey(image) --> read pixels and build the Example (or a counted reject)

Only headers and label vectors are shuffled; pixels are read after the joins and stream to the writer, so memory
does not grow with the input. Every reject, warning and label problem becomes an event written beside the
Examples; `Do` sums them into `ingestion_report.json` and artifact properties, and fails the run when the
rejected share of the input files exceeds `max_reject_share`. The splits are written by `tfrecord_sink`, and beside
them each subtype's positives of the train split, which the Trainer's balanced sampler reads.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Any

import apache_beam as beam
import tensorflow as tf
from google.protobuf import json_format, struct_pb2
from tfx.components.example_gen import base_example_gen_executor, utils
from tfx.components.util import examples_utils
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from components.dicom_example_gen.tfrecord_sink import write_split_records
from ich_model.constants import LABELS, NUM_LABELS, SUBTYPES
from ich_model.dicom import DicomRejected, list_input_files, printable_path, read_header, read_slice
from ich_model.examples import (
    LABEL,
    POPULATION_CATEGORICAL,
    POPULATION_NUMERIC,
    TRAIN_SPLIT,
    place_slices,
    positives_uri,
    slice_to_example,
)
from ich_model.labels import LabelFileError, LabelProblem, merge_image_rows, parse_label_rows
from ich_model.pseudonyms import pseudonymised, root_salt

REPORT_FILE = "ingestion_report.json"
EVENTS_DIR = "ingestion_events"
WRITE_TEMP_DIR = "write_temp"
DEFAULT_MAX_REJECT_SHARE = 0.05
# Keys of the component's custom config (a protobuf Struct in example_gen_pb2.CustomConfig).
MAX_REJECT_SHARE = "max_reject_share"
ID_SALT_FILE = "id_salt_file"  # the path of the salt file, never the salt (ich_model.pseudonyms)
_EVENTS_KEY = "_ingestion_events_dir"

# Event kinds written by the Beam graph.
REJECTED = "rejected"  # an input file that gave no Example
WARNING = "warning"  # an Example was written, with a fix or assumption worth knowing
MISSING_FILE = "missing_file"  # a labelled image whose file is not in the input
LABEL_PROBLEM = "label_problem"  # a malformed CSV row, or an image whose labels conflict or are incomplete
INPUT_FILES = "input_files"
INGESTED = "ingested"
LABEL_COUNTS = "label_counts"  # per split: Examples and positives of each label (the DataGate's prevalence)
POPULATION = "population"  # per split: how many Examples hold each value of each population feature (its drift)


def custom_config_values(exec_properties: dict[str, Any]) -> dict[str, Any]:
    """The Struct packed in the component's CustomConfig, as a dict (empty when none was given)."""
    raw = exec_properties.get(standard_component_specs.CUSTOM_CONFIG_KEY)
    if not raw:
        return {}
    config = example_gen_pb2.CustomConfig()
    if isinstance(raw, str):
        json_format.Parse(raw, config)
    else:
        config.CopyFrom(raw)
    if not config.HasField("custom_config"):
        return {}
    values = struct_pb2.Struct()
    config.custom_config.Unpack(values)
    return json_format.MessageToDict(values)


def _event(kind: str, reason: str, subject: str, message: str = "") -> str:
    return json.dumps({"kind": kind, "reason": reason, "subject": printable_path(subject), "message": message},
                      sort_keys=True)


def _source(path: str) -> str | bytes:
    """Local files are read by path; remote ones (gs://, s3://, ...) are fetched as bytes."""
    if "://" not in path:
        return path
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def _read(reader, path: str):
    """(result, None) or (None, reject event): one bad file must never stop the run."""
    try:
        return reader(_source(path)), None
    except DicomRejected as rejected:
        return None, _event(REJECTED, rejected.reason, path, rejected.message)
    except Exception as error:  # noqa: BLE001 - whatever a broken file makes a decoder raise is a reject
        return None, _event(REJECTED, "unreadable", path, f"{type(error).__name__}: {error}")


class _ReadHeader(beam.DoFn):
    """A candidate file -> (study, header) or a reject event."""

    def process(self, path: str):
        header, rejected = _read(read_header, path)
        if rejected:
            yield beam.pvalue.TaggedOutput(REJECTED, rejected)
        else:
            yield header.study_uid, (path, header)


def _label_rows(csv_path: str):
    """(image_id, LabelRow) for each row of a label CSV; problems as events."""
    try:
        with tf.io.gfile.GFile(csv_path, "r") as f:
            for item in parse_label_rows(f, source=csv_path):
                if isinstance(item, LabelProblem):
                    yield beam.pvalue.TaggedOutput(LABEL_PROBLEM, _event(LABEL_PROBLEM, item.kind, csv_path,
                                                                         item.message))
                else:
                    yield item.image_id, item
    except (LabelFileError, UnicodeDecodeError) as error:
        yield beam.pvalue.TaggedOutput(LABEL_PROBLEM, _event(LABEL_PROBLEM, "not_a_label_file", csv_path,
                                                             str(error)))


def _merge_labels(item):
    image_id, rows = item
    vector, problems = merge_image_rows(image_id, rows)
    for problem in problems:
        yield beam.pvalue.TaggedOutput(LABEL_PROBLEM, _event(LABEL_PROBLEM, problem.kind, image_id,
                                                             problem.message))
    yield image_id, (vector, [p.kind for p in problems])


def _place_study(item):
    """Order one study's slices; key each by image ID for the label join."""
    _, entries = item
    entries = list(entries)
    placements = place_slices(header for _, header in entries)
    for path, header in entries:
        yield header.image_id, (path, placements[header.image_id])


class _BuildExample(beam.DoFn):
    """Join of one image ID: its file(s) and label vector -> an Example, or the events that explain why not."""

    def __init__(self, span: int):
        self._span = span

    def process(self, item):
        image_id, joined = item
        files = sorted(joined["slice"], key=lambda entry: entry[0])
        labels = list(joined["label"])
        if not files:
            if labels:
                yield beam.pvalue.TaggedOutput(MISSING_FILE, _event(MISSING_FILE, MISSING_FILE, image_id,
                                                                    "labelled image with no file in the input"))
            return
        for path, _ in files[1:]:
            yield beam.pvalue.TaggedOutput(REJECTED, _event(
                REJECTED, "duplicate_image", path, f"{image_id} is also in {files[0][0]}"))
        path, placement = files[0]
        ct, rejected = _read(read_slice, path)
        if rejected:
            yield beam.pvalue.TaggedOutput(REJECTED, rejected)
            return
        if not labels:
            yield beam.pvalue.TaggedOutput(REJECTED, _event(REJECTED, "unlabelled", path,
                                                            f"{image_id} has no row in any label CSV"))
            return
        vector, problems = labels[0]
        if vector is None:
            yield beam.pvalue.TaggedOutput(REJECTED, _event(REJECTED, f"label_{problems[0]}", path,
                                                            f"labels of {image_id} cannot be used"))
            return
        for warning in ct.warnings:
            yield beam.pvalue.TaggedOutput(WARNING, _event(WARNING, warning, path))
        yield slice_to_example(ct, placement, vector, self._span)


@beam.ptransform_fn
def dicom_to_example(pipeline: beam.Pipeline, exec_properties: dict[str, Any], split_pattern: str):
    """PTransform: the files under `input_base/split_pattern` -> tf.Examples (see the module docstring)."""
    events_dir = exec_properties.get(_EVENTS_KEY)
    pattern = os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY], split_pattern)
    span = int(exec_properties.get("span") or 0)

    files = (pipeline
             | "Pattern" >> beam.Create([pattern])
             | "ListFiles" >> beam.FlatMap(list_input_files)
             | "Distribute" >> beam.Reshuffle())
    csv_files = files | "LabelFiles" >> beam.Filter(lambda p: p.lower().endswith(".csv"))
    candidates = files | "SliceFiles" >> beam.Filter(lambda p: not p.lower().endswith(".csv"))

    headers = candidates | "ReadHeaders" >> beam.ParDo(_ReadHeader()).with_outputs(REJECTED, main="headers")
    placed = (headers.headers
              | "GroupByStudy" >> beam.GroupByKey()
              | "PlaceInStudy" >> beam.FlatMap(_place_study))

    rows = csv_files | "ReadLabelRows" >> beam.FlatMap(_label_rows).with_outputs(LABEL_PROBLEM, main="rows")
    labels = (rows.rows
              | "GroupRowsByImage" >> beam.GroupByKey()
              | "MergeLabels" >> beam.FlatMap(_merge_labels).with_outputs(LABEL_PROBLEM, main="labels"))

    built = ({"slice": placed, "label": labels.labels}
             | "JoinByImage" >> beam.CoGroupByKey()
             | "BuildExamples" >> beam.ParDo(_BuildExample(span))
             .with_outputs(REJECTED, WARNING, MISSING_FILE, main="examples"))

    if events_dir:
        counts = (
            (candidates | "CountFiles" >> beam.combiners.Count.Globally()
             | "FilesEvent" >> beam.Map(lambda n: _event(INPUT_FILES, INPUT_FILES, "", str(n))),
             # Count ones, not Examples, so that no grouping step can ever hold the pixels.
             built.examples | "One" >> beam.Map(lambda _: 1) | "CountExamples" >> beam.CombineGlobally(sum)
             | "IngestedEvent" >> beam.Map(lambda n: _event(INGESTED, INGESTED, "", str(n))))
            | "FlattenCounts" >> beam.Flatten())
        ((headers[REJECTED], rows[LABEL_PROBLEM], labels[LABEL_PROBLEM], built[REJECTED], built[WARNING],
          built[MISSING_FILE], counts)
         | "FlattenEvents" >> beam.Flatten()
         | "WriteEvents" >> beam.io.WriteToText(os.path.join(events_dir, "events"), file_name_suffix=".jsonl"))
    return built.examples


class _SumLabels(beam.CombineFn):
    """Examples and positives per label of a split, summed without holding an Example."""

    def create_accumulator(self):
        return [0] * (1 + NUM_LABELS)

    def add_input(self, counts, example):
        counts[0] += 1
        for index, value in enumerate(example.features.feature[LABEL].int64_list.value):
            counts[1 + index] += int(value)
        return counts

    def merge_accumulators(self, accumulators):
        return [sum(values) for values in zip(*accumulators, strict=True)]

    def extract_output(self, counts):
        return counts


class _CountPopulation(beam.CombineFn):
    """Per population feature, how many Examples of a split hold each value (a NaN or absent value is not
    counted): exact counts that the DataGate can add up over spans, where statistics' histograms cannot be."""

    def create_accumulator(self):
        return {name: Counter() for name in (*POPULATION_CATEGORICAL, *POPULATION_NUMERIC)}

    def add_input(self, counts, example):
        for name, counter in counts.items():
            feature = example.features.feature[name]
            values = (feature.bytes_list.value if name in POPULATION_CATEGORICAL else
                      feature.float_list.value or feature.int64_list.value)
            for value in values:
                if isinstance(value, bytes):
                    counter[value.decode("utf-8", "replace")] += 1
                elif value == value:  # not NaN
                    counter[value] += 1
        return counts

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for counts in accumulators:
            for name, counter in counts.items():
                merged[name].update(counter)
        return merged

    def extract_output(self, counts):
        return {name: sorted(counter.items()) for name, counter in counts.items()}


def _population_event(split: str):
    return lambda counts: _event(POPULATION, split, "", json.dumps(counts))


def _label_counts_event(split: str):
    def event(counts) -> str:
        positives = dict(zip(LABELS, counts[1:], strict=True))
        return _event(LABEL_COUNTS, split, "", json.dumps({"examples": counts[0], **positives}))
    return event


def _positive_for(subtype_index: int):
    """Filter: the Example (proto or serialized) is labelled positive for the subtype."""
    def positive(example) -> bool:
        if isinstance(example, bytes):
            example = tf.train.Example.FromString(example)
        labels = example.features.feature[LABEL].int64_list.value
        return bool(labels) and labels[subtype_index] == 1
    return positive


def summarize_events(events_dir: str) -> dict[str, Any]:
    """The ingestion report: counts by reason and every rejected file, missing file and label problem."""
    report: dict[str, Any] = {"input_files": 0, "ingested": 0, "rejected": {}, "warnings": {},
                              "missing_files": 0, "label_problems": {}, "rejected_files": [],
                              "missing_file_ids": [], "label_problem_details": [], LABEL_COUNTS: {},
                              POPULATION: {}}
    rejected, warnings, problems = Counter(), Counter(), Counter()
    # Each sink its own file prefix: a Beam text sink deletes the files that match its prefix before it writes.
    paths = [path for prefix in ("events", LABEL_COUNTS, POPULATION)
             for path in sorted(tf.io.gfile.glob(os.path.join(events_dir, f"{prefix}*.jsonl")))]
    for path in paths:
        with tf.io.gfile.GFile(path) as f:
            for line in f:
                event = json.loads(line)
                kind = event["kind"]
                if kind in (INPUT_FILES, INGESTED):
                    report[kind] += int(event["message"])
                elif kind == REJECTED:
                    rejected[event["reason"]] += 1
                    report["rejected_files"].append(
                        {"path": event["subject"], "reason": event["reason"], "message": event["message"]})
                elif kind == WARNING:
                    warnings[event["reason"]] += 1
                elif kind == MISSING_FILE:
                    report["missing_file_ids"].append(event["subject"])
                elif kind == LABEL_PROBLEM:
                    problems[event["reason"]] += 1
                    report["label_problem_details"].append(event["message"])
                elif kind in (LABEL_COUNTS, POPULATION):
                    report[kind][event["reason"]] = json.loads(event["message"])
    report["rejected"] = dict(sorted(rejected.items()))
    report["warnings"] = dict(sorted(warnings.items()))
    report["label_problems"] = dict(sorted(problems.items()))
    report["missing_files"] = len(report["missing_file_ids"])
    for key in ("rejected_files", "missing_file_ids", "label_problem_details"):
        report[key].sort(key=str)
    report["rejected_total"] = sum(rejected.values())
    report["rejected_share"] = report["rejected_total"] / report["input_files"] if report["input_files"] else 0.0
    return report


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
    """Custom ExampleGen executor: TFX handles spans, versions and splitting; this writes the splits (streaming)
    and the ingestion report."""

    def GetInputSourceToExamplePTransform(self) -> beam.PTransform:  # noqa: N802 (TFX's name)
        return dicom_to_example

    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802 (TFX's name)
        self._log_startup(input_dict, output_dict, exec_properties)
        input_config = proto_utils.json_to_proto(exec_properties[standard_component_specs.INPUT_CONFIG_KEY],
                                                 example_gen_pb2.Input())
        output_config = proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY],
                                                  example_gen_pb2.Output())
        artifacts = output_dict[standard_component_specs.EXAMPLES_KEY]
        examples = artifact_utils.get_single_instance(artifacts)
        examples.split_names = artifact_utils.encode_split_names(
            utils.generate_output_split_names(input_config, output_config))
        events_dir = os.path.join(examples.uri, EVENTS_DIR)
        salt_file = custom_config_values(exec_properties).get(ID_SALT_FILE)
        salt = root_salt(salt_file) if salt_file else None
        if salt_file:
            logging.info("DicomExampleGen: patient, study and series IDs pseudonymised with the salt in %s", salt_file)
        with self._make_beam_pipeline() as pipeline:
            splits = self.GenerateExamplesByBeam(pipeline, {**exec_properties, _EVENTS_KEY: events_dir})
            if salt:
                # After the split, which hashes the patient ID as the file holds it: a patient's split does not
                # depend on the salt, so roots with different salts split a set alike.
                splits = {name: split | f"Pseudonymise[{name}]" >> beam.Map(pseudonymised, salt)
                          for name, split in splits.items()}
            for name, split in splits.items():
                _ = split | f"WriteSplit[{name}]" >> write_split_records(
                    artifact_utils.get_split_uri(artifacts, name),
                    os.path.join(examples.uri, WRITE_TEMP_DIR, name))
            if TRAIN_SPLIT in splits:
                self._write_positives(splits[TRAIN_SPLIT], examples.uri)
            for name, split in splits.items():
                _ = (split
                     | f"LabelCounts[{name}]" >> beam.CombineGlobally(_SumLabels())
                     | f"LabelCountsEvent[{name}]" >> beam.Map(_label_counts_event(name))
                     | f"WriteLabelCounts[{name}]" >> beam.io.WriteToText(
                         os.path.join(events_dir, f"{LABEL_COUNTS}-{name}"), file_name_suffix=".jsonl"))
                _ = (split
                     | f"Population[{name}]" >> beam.CombineGlobally(_CountPopulation())
                     | f"PopulationEvent[{name}]" >> beam.Map(_population_event(name))
                     | f"WritePopulation[{name}]" >> beam.io.WriteToText(
                         os.path.join(events_dir, f"{POPULATION}-{name}"), file_name_suffix=".jsonl"))
        tf.io.gfile.rmtree(os.path.join(examples.uri, WRITE_TEMP_DIR))  # emptied by the writers' final moves
        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, "tfrecords_gzip")
        self._report(examples, events_dir, exec_properties)
        empty = [name for name in splits if not tf.io.gfile.glob(
            os.path.join(artifact_utils.get_split_uri(artifacts, name), "*"))]
        if empty:
            raise ValueError(
                f"split {', '.join(empty)} received no examples: splitting is by patient, and this input has too "
                f"few patients for the configured shares; add patients or change train_share")

    @staticmethod
    def _write_positives(train, examples_uri: str) -> None:
        """Each subtype's train positives into their own folder (ich_model.examples.POSITIVES_FOLDER). Every
        folder is made, even one that stays empty, so that the Trainer can tell "no positives" from an artifact
        written before these folders existed."""
        for index, subtype in enumerate(SUBTYPES):
            folder = positives_uri(examples_uri, TRAIN_SPLIT, subtype)
            tf.io.gfile.makedirs(folder)
            _ = (train
                 | f"Positives[{subtype}]" >> beam.Filter(_positive_for(index))
                 | f"WritePositives[{subtype}]" >> write_split_records(
                     folder, os.path.join(examples_uri, WRITE_TEMP_DIR, f"positives-{subtype}")))

    @staticmethod
    def _report(examples, events_dir: str, exec_properties: dict[str, Any]) -> None:
        """Write the ingestion report, record its counts on the artifact, enforce the reject share."""
        report = summarize_events(events_dir)
        report["span"] = int(exec_properties.get("span") or 0)
        report_path = os.path.join(examples.uri, REPORT_FILE)
        with tf.io.gfile.GFile(report_path, "w") as f:
            json.dump(report, f, indent=2)
        examples.set_int_custom_property("ingested", report["ingested"])
        examples.set_int_custom_property("input_files", report["input_files"])
        examples.set_int_custom_property("rejected", report["rejected_total"])
        for reason, count in report["rejected"].items():
            examples.set_int_custom_property(f"rejected_{reason}", count)
        examples.set_int_custom_property("missing_files", report["missing_files"])
        examples.set_int_custom_property("label_problems", sum(report["label_problems"].values()))
        logging.info("DicomExampleGen: %d of %d files ingested; rejected %s; report in %s", report["ingested"],
                     report["input_files"], report["rejected"] or "none", report_path)

        max_share = float(custom_config_values(exec_properties).get(MAX_REJECT_SHARE, DEFAULT_MAX_REJECT_SHARE))
        if report["input_files"] == 0:
            raise ValueError(f"no input files under {exec_properties[standard_component_specs.INPUT_BASE_KEY]} "
                             f"match the input pattern")
        if report["rejected_share"] > max_share:
            reasons = ", ".join(f"{reason} {n}" for reason, n in Counter(report["rejected"]).most_common(5))
            raise ValueError(
                f"{report['rejected_total']} of {report['input_files']} input files "
                f"({report['rejected_share']:.1%}) were rejected, more than the allowed {max_share:.1%} "
                f"({reasons}); every file and its reason is listed in {report_path}")
