"""DicomExampleGen in a real TFX run (LocalDagRunner, SQLite metadata): span folders resolved by TFX's driver."""

from __future__ import annotations

import glob

import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from tfx import v1 as tfx

from components.dicom_example_gen import DicomExampleGen
from components.dicom_example_gen.component import default_input_pattern
from components.dicom_example_gen.span_folders import SPAN_PATTERN, span_folder
from ich_model.synth import generate_dataset
from pipeline.configs import beam_args_with_workers_image

pytestmark = pytest.mark.e2e


def test_latest_span_is_ingested_and_recorded(tmp_path):
    input_base = tmp_path / "incoming"
    for span, seed in ((1, 21), (2, 22)):
        generate_dataset(input_base / span_folder(span), patients=4, slices_per_study=3, seed=seed, size=64,
                         progress=False)
    assert default_input_pattern(str(input_base)) == SPAN_PATTERN
    metadata_path = tmp_path / "metadata.sqlite"
    example_gen = DicomExampleGen(input_base=str(input_base))
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="ingest-spans",
        pipeline_root=str(tmp_path / "root"),
        components=[example_gen],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(metadata_path)),
        beam_pipeline_args=beam_args_with_workers_image(["--direct_running_mode=in_memory",
                                                         "--direct_num_workers=1"]),
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)

    store = metadata_store.MetadataStore(
        tfx.orchestration.metadata.sqlite_metadata_connection_config(str(metadata_path)))
    [examples] = store.get_artifacts_by_type("Examples")
    assert examples.custom_properties["span"].int_value == 2
    span2_ids = {p.stem for p in (input_base / span_folder(2)).rglob("*.dcm")}
    ids, spans = set(), set()
    files = glob.glob(f"{examples.uri}/Split-*/*.gz")
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = tf.train.Example.FromString(record.numpy())
        ids.add(example.features.feature["image_id"].bytes_list.value[0].decode())
        spans.add(example.features.feature["span"].int64_list.value[0])
    assert ids == span2_ids
    assert spans == {2}
