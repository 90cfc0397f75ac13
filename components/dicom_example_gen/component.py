"""DicomExampleGen: a FileBasedExampleGen whose executor reads DICOM slices and RSNA label CSVs."""

from __future__ import annotations

import tensorflow as tf
from google.protobuf import struct_pb2
from tfx.components import FileBasedExampleGen
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2, range_config_pb2

from components.dicom_example_gen.executor import (
    DEFAULT_MAX_REJECT_SHARE,
    ID_SALT_FILE,
    MAX_REJECT_SHARE,
    Executor,
)
from components.dicom_example_gen.span_folders import SPAN_GLOB, SPAN_PATTERN
from ich_model.examples import CONTEXT_SPLIT, PATIENT_ID, TRAIN_SPLIT

# The RSNA download: `stage_2_train/` and `stage_2_train.csv` (the test folder and the sample submission,
# which has no labels, stay out).
RSNA_PATTERN = "stage_2_train*"
HASH_BUCKETS = 100


def default_input_pattern(input_base: str) -> str:
    """SPAN_PATTERN when the input base holds span folders, else the RSNA layout when present, else all."""
    if tf.io.gfile.glob(f"{input_base.rstrip('/')}/{SPAN_GLOB}"):
        return SPAN_PATTERN
    if tf.io.gfile.glob(f"{input_base.rstrip('/')}/{RSNA_PATTERN}"):
        return RSNA_PATTERN
    return "*"


def patient_split_config(train_share: float, context_share: float = 0.0) -> example_gen_pb2.Output:
    """Train/eval by a deterministic hash of patient_id, so that no patient is in both splits; with
    `context_share`, that share of all patients moves from train to a `context` split (patients held out from the
    members, for the study-context stage). TFX gives each split the next hash buckets in order, so the eval split
    holds the same patients whatever the context share."""
    if not 0.0 < train_share < 1.0:
        raise ValueError(f"train_share must be between 0 and 1 (exclusive), got {train_share}")
    train = min(max(round(train_share * HASH_BUCKETS), 1), HASH_BUCKETS - 1)
    context = round(context_share * HASH_BUCKETS)
    if context_share < 0.0 or (context_share > 0.0 and not 1 <= context < train):
        raise ValueError(f"context_share must be 0 (no context split) or a share of the patients below train_share "
                         f"{train_share} of at least {1 / HASH_BUCKETS}, got {context_share}")
    shares = [(TRAIN_SPLIT, train - context), (CONTEXT_SPLIT, context), ("eval", HASH_BUCKETS - train)]
    return example_gen_pb2.Output(split_config=example_gen_pb2.SplitConfig(
        splits=[example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=buckets)
                for name, buckets in shares if buckets],
        partition_feature_name=PATIENT_ID))


class DicomExampleGen(FileBasedExampleGen):
    """Ingests CT DICOM (any depth, with or without `.dcm`) and RSNA label CSVs into tf.Examples.

    Input base: the RSNA layout itself (`stage_2_train/` + `stage_2_train.csv`) or span folders
    (`span-{SPAN}/...`, each with its DICOM files and CSV). Output: `train` and `eval` split by patient (and
    `context` with `context_share`); each subtype's train positives in `Positives-train/<subtype>/` for the
    balanced sampler; an ingestion report (`ingestion_report.json`) beside the splits, with its counts as artifact
    properties. With `id_salt_file`, patient, study and series IDs are stored as pseudonyms salted with that
    file's salt (made there on first use; ich_model.pseudonyms); the pipeline always gives one.
    """

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, input_base: str, input_pattern: str | None = None, train_share: float = 0.8,
                 context_share: float = 0.0,
                 max_reject_share: float = DEFAULT_MAX_REJECT_SHARE, id_salt_file: str | None = None,
                 range_config: range_config_pb2.RangeConfig | None = None):
        if not 0.0 <= max_reject_share <= 1.0:
            raise ValueError(f"max_reject_share must be between 0 and 1, got {max_reject_share}")
        values = struct_pb2.Struct()
        values.update({MAX_REJECT_SHARE: max_reject_share, **({ID_SALT_FILE: id_salt_file} if id_salt_file else {})})
        custom_config = example_gen_pb2.CustomConfig()
        custom_config.custom_config.Pack(values)
        pattern = input_pattern or default_input_pattern(input_base)
        super().__init__(
            input_base=input_base,
            input_config=example_gen_pb2.Input(splits=[
                example_gen_pb2.Input.Split(name="single_split", pattern=pattern)]),
            output_config=patient_split_config(train_share, context_share),
            custom_config=custom_config,
            range_config=range_config,
        )
