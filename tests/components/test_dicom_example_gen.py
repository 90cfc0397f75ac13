"""DicomExampleGen's executor under Beam on real files: synthetic RSNA-format slices, pydicom's own test files
and broken files, checked against what pydicom reads from the same files."""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import json
import math
import os
import shutil
import stat
from collections import defaultdict
from pathlib import Path

import apache_beam as beam
import numpy as np
import pydicom
import pytest
import tensorflow as tf
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that
from pydicom.data import get_testdata_file
from tfx.types import standard_component_specs

from components.dicom_example_gen.component import DicomExampleGen
from components.dicom_example_gen.executor import REPORT_FILE, dicom_to_example
from ich_model.constants import LABELS, SUBTYPES
from ich_model.examples import LABEL, example_pixels, positives_uri
from ich_model.members import BATCH_SIZE, MEMBERS, balanced_stream, sampled_prevalence
from ich_model.reference import is_rsna_wrapped, rsna_hounsfield
from ich_model.synth import IMAGES_DIR, LABELS_CSV, generate_dataset
from ich_model.trainer import positive_examples
from tests.pipeline_helpers import BEAM_ARGS, read_split, run_example_gen, split_files

BROKEN = {  # file name in the input -> expected reject reason
    "MR_truncated.dcm": "not_ct",
    "no_meta.dcm": "not_dicom",
    "rtplan.dcm": "no_pixel_data",
    "rtdose.dcm": "multi_frame",
    "SC_rgb_small_odd.dcm": "not_grayscale",
    "empty.dcm": "not_dicom",
    "random_bytes": "not_dicom",
}
CT_SMALL_LABEL = [0, 1, 0, 0, 0, 1]
MISSING_ID = "ID_0000dead0"


@pytest.fixture(scope="module")
def input_base(tmp_path_factory) -> Path:
    """An RSNA-layout folder: synthetic slices plus pydicom's CT_small (nested, no suffix, labelled), broken
    files, and one labelled image whose file is missing."""
    base = tmp_path_factory.mktemp("rsna")
    generate_dataset(base, patients=16, slices_per_study=4, seed=4, size=96, positive_fraction=0.5,
                     progress=False)
    images = base / IMAGES_DIR
    nested = images / "extra" / "deeper"
    nested.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), nested / "ct_small_without_suffix")
    for name in ("MR_truncated.dcm", "no_meta.dcm", "rtplan.dcm", "rtdose.dcm", "SC_rgb_small_odd.dcm"):
        shutil.copy(get_testdata_file(name), images / name)
    (images / "empty.dcm").write_bytes(b"")
    (images / "random_bytes").write_bytes(np.random.default_rng(1).bytes(2048))
    (images / ".DS_Store").write_bytes(b"ignored")
    ct_small_id = pydicom.dcmread(get_testdata_file("CT_small.dcm")).SOPInstanceUID
    with open(base / LABELS_CSV, "a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        for name, value in zip(LABELS, CT_SMALL_LABEL, strict=True):
            writer.writerow([f"{ct_small_id}_{name}", value])
        for name in LABELS:
            writer.writerow([f"{MISSING_ID}_{name}", 0])
    return base


def dicom_files(base: Path) -> dict[str, pydicom.Dataset]:
    """Every valid slice under `base`, as pydicom reads it, keyed by SOPInstanceUID."""
    found = {}
    for path in sorted(base.rglob("*")):
        if path.is_file() and path.name not in BROKEN and path.suffix != ".csv" and not path.name.startswith("."):
            ds = pydicom.dcmread(path)
            found[str(ds.SOPInstanceUID)] = ds
    return found


def csv_labels(path: Path) -> dict[str, list[int]]:
    labels: dict[str, list[int]] = defaultdict(lambda: [0] * len(LABELS))
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            image_id, label = row["ID"].rsplit("_", 1)
            labels[image_id][LABELS.index(label)] = int(row["Label"])
    return dict(labels)


def feature(example: tf.train.Example, name: str):
    f = example.features.feature[name]
    kind = f.WhichOneof("kind")
    values = list(getattr(f, kind).value)
    return values[0] if len(values) == 1 and name != "label" else values


def check_examples(base: Path):
    """A Beam matcher: the Examples against pydicom's reading of the same files and the CSV."""
    reference = dicom_files(base)
    labels = csv_labels(base / LABELS_CSV)

    def check(examples):
        by_id = {feature(e, "image_id").decode(): e for e in examples}
        assert set(by_id) == set(reference)
        studies = defaultdict(list)
        for image_id, ds in reference.items():
            e = by_id[image_id]
            pixels = example_pixels(e)
            if not is_rsna_wrapped(ds):
                assert np.array_equal(pixels, ds.pixel_array), image_id  # stored values, lossless
            hu = pixels * feature(e, "rescale_slope") + feature(e, "rescale_intercept")
            assert np.array_equal(hu, rsna_hounsfield(ds)), image_id
            assert feature(e, "label") == labels[image_id]
            assert feature(e, "patient_id").decode() == ds.PatientID
            assert feature(e, "image_size").decode() == f"{ds.Rows}x{ds.Columns}"
            expected_group = "wrapped" if is_rsna_wrapped(ds) else f"{float(ds.RescaleIntercept):g}"
            assert feature(e, "intercept_group").decode() == expected_group
            assert feature(e, "pixel_spacing_mm") == pytest.approx(float(ds.PixelSpacing[0]))
            orientation = np.array(ds.ImageOrientationPatient, float)
            along_normal = float(np.dot(np.array(ds.ImagePositionPatient, float),
                                        np.cross(orientation[:3], orientation[3:])))
            assert feature(e, "slice_position_mm") == pytest.approx(along_normal, abs=1e-3)
            studies[ds.StudyInstanceUID].append((along_normal, float(ds.ImagePositionPatient[2]), image_id))
        for slices in studies.values():
            for index, (_, z, image_id) in enumerate(sorted(slices)):
                e = by_id[image_id]
                assert feature(e, "slice_index") == index
                assert feature(e, "slice_count") == len(slices)
                assert feature(e, "z_position") == pytest.approx(z, abs=1e-3)
                expected = index / (len(slices) - 1) if len(slices) > 1 else 0.5
                assert feature(e, "relative_position") == pytest.approx(expected)

    return check


def test_executor_ptransform_builds_examples_that_match_pydicom(input_base):
    exec_properties = {standard_component_specs.INPUT_BASE_KEY: str(input_base)}
    with TestPipeline(argv=BEAM_ARGS) as pipeline:
        examples = pipeline | dicom_to_example(exec_properties, "stage_2_train*")
        check = check_examples(input_base)
        assert_that(examples | beam.combiners.ToList(), lambda batches: check(batches[0]))


@pytest.fixture(scope="module")
def ingested(input_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("examples")
    artifact = run_example_gen(DicomExampleGen(str(input_base), max_reject_share=0.25), out)
    return out, artifact


def test_every_reject_is_counted_by_reason_and_listed(ingested, input_base):
    out, artifact = ingested
    report = json.loads((out / REPORT_FILE).read_text())
    valid = len(dicom_files(input_base))
    assert report["ingested"] == valid
    assert report["input_files"] == valid + len(BROKEN)
    expected = defaultdict(int)
    for reason in BROKEN.values():
        expected[reason] += 1
    assert report["rejected"] == dict(expected)
    listed = {Path(r["path"]).name: r["reason"] for r in report["rejected_files"]}
    assert listed == BROKEN
    assert report["missing_file_ids"] == [MISSING_ID]
    assert report["rejected_share"] == pytest.approx(len(BROKEN) / (valid + len(BROKEN)))
    assert report["warnings"].get("wrapped_pixels_fixed", 0) == sum(
        is_rsna_wrapped(ds) for ds in dicom_files(input_base).values())
    properties = artifact.mlmd_artifact.custom_properties
    assert properties["ingested"].int_value == valid
    assert properties["rejected"].int_value == len(BROKEN)
    assert properties["rejected_not_dicom"].int_value == 3
    assert properties["missing_files"].int_value == 1


def test_splits_are_by_patient(ingested, input_base):
    out, _ = ingested
    patients = {split: {feature(e, "patient_id") for e in read_split(out, split)} for split in ("train", "eval")}
    assert patients["train"] and patients["eval"]
    assert not patients["train"] & patients["eval"]
    total = sum(len(read_split(out, split)) for split in ("train", "eval"))
    assert total == len(dicom_files(input_base))


def test_a_context_split_takes_its_patients_from_train_and_leaves_eval_as_it_was(ingested, input_base, tmp_path):
    plain, _ = ingested
    out = tmp_path / "with_context"
    run_example_gen(DicomExampleGen(str(input_base), max_reject_share=0.25, context_share=0.4), out)

    def images(base: Path, split: str) -> set[bytes]:
        return {feature(e, "image_id") for e in read_split(base, split)}

    def patients(split: str) -> set[bytes]:
        return {feature(e, "patient_id") for e in read_split(out, split)}

    assert images(out, "eval") == images(plain, "eval")
    assert images(out, "context") and images(out, "train")
    assert images(out, "context") | images(out, "train") == images(plain, "train")
    assert not patients("context") & patients("train")
    assert not patients("context") & patients("eval")
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["label_counts"]["context"]["examples"] == len(images(out, "context"))
    # The members sample exactly the train split's positives: none of the context patients' positive slices.
    def positives(split: str) -> set[bytes]:
        return {feature(e, "image_id") for e in read_split(out, split) if any(feature(e, "label")[:len(SUBTYPES)])}

    sampled = {feature(tf.train.Example.FromString(record.numpy()), "image_id")
               for subtype in SUBTYPES for record, _ in labelled_records(positive_files(out, subtype))}
    assert positives("context") and sampled == positives("train")


def test_split_files_are_gzip_streams_of_exactly_what_tensorflow_s_tfrecord_writer_writes(ingested, tmp_path):
    out, _ = ingested
    files = split_files(out, "train") + split_files(out, "eval")
    assert files
    for path in files:
        written = gzip.decompress(Path(path).read_bytes())
        records = [r.numpy() for r in tf.data.TFRecordDataset([path], compression_type="GZIP")]
        reference = tmp_path / "reference.tfrecord"
        with tf.io.TFRecordWriter(str(reference)) as writer:  # TensorFlow's framing and CRC-32C checksums
            for record in records:
                writer.write(record)
        assert records and written == reference.read_bytes(), path


LABEL_SPEC = {LABEL: tf.io.FixedLenFeature([len(LABELS)], tf.int64)}


def labelled_records(files: list[str]) -> tf.data.Dataset:
    """(serialized Example, float labels) pairs, the pixels left unparsed."""
    return tf.data.TFRecordDataset(files, compression_type="GZIP").map(
        lambda record: (record, tf.cast(tf.io.parse_single_example(record, LABEL_SPEC)[LABEL], tf.float32)))


def positive_files(out: Path, subtype: str) -> list[str]:
    return sorted(glob.glob(os.path.join(positives_uri(str(out), "train", subtype), "*.gz")))


def train_labels(out: Path) -> np.ndarray:
    """The train split's label vectors, read from the Examples as protos."""
    return np.array([e.features.feature[LABEL].int64_list.value for e in read_split(out, "train")], dtype=np.float64)


def test_each_subtype_s_train_positives_are_written_beside_the_split(ingested):
    out, _ = ingested
    train = [(record.numpy(), labels.numpy()) for record, labels in labelled_records(split_files(out, "train"))]
    with_positives = 0
    for index, subtype in enumerate(SUBTYPES):
        expected = sorted(record for record, labels in train if labels[index] == 1)
        written = sorted(record.numpy() for record, _ in labelled_records(positive_files(out, subtype)))
        assert written == expected, subtype
        with_positives += bool(expected)
        assert os.path.isdir(positives_uri(str(out), "train", subtype))  # made even when empty
    assert with_positives >= 3
    assert not glob.glob(str(out / "Positives-eval"))  # only the train split is sampled


@pytest.mark.parametrize("member", ["a", "c"])
def test_the_sampler_on_the_positive_folders_draws_what_sampled_prevalence_says(ingested, member):
    out, _ = ingested
    labels = train_labels(out)
    cooccurrence, prevalence = labels.T @ labels, labels.mean(axis=0)  # numpy, not the Trainer's counting
    positives = {index: labelled_records(positive_files(out, subtype)) for index, subtype in enumerate(SUBTYPES)
                 if cooccurrence[index, index]}
    hard = MEMBERS[member].hard_subtypes
    stream = balanced_stream(labelled_records(split_files(out, "train")), prevalence, seed=0, hard_subtypes=hard,
                             positives=positives)
    windows = 400
    drawn = np.concatenate([batch.numpy() for _, batch in stream.batch(BATCH_SIZE).take(windows)])
    expected = sampled_prevalence(cooccurrence, len(labels), hard)
    assert np.allclose(drawn.mean(axis=0), expected, atol=0.015), (drawn.mean(axis=0), expected)
    assert (expected > prevalence + 0.05)[:-1].all()


def test_the_trainer_falls_back_to_filtering_without_positive_folders_and_refuses_an_incomplete_one(
        ingested, tmp_path, caplog):
    out, _ = ingested
    copy = tmp_path / "examples"
    shutil.copytree(out, copy)
    pattern = [str(copy / "Split-train" / "*")]
    labels = train_labels(copy)
    cooccurrence = labels.T @ labels
    index = next(index for index in range(len(SUBTYPES)) if cooccurrence[index, index])
    Path(positive_files(copy, SUBTYPES[index])[0]).unlink()
    with pytest.raises(ValueError, match=rf"\d+ Examples in the {SUBTYPES[index]} positive folders .* but the train "
                                         rf"split holds {int(cooccurrence[index, index])} {SUBTYPES[index]} positives"):
        positive_examples(pattern, None, None, cooccurrence)
    shutil.rmtree(copy / "Positives-train")
    assert positive_examples(pattern, None, None, cooccurrence) is None
    assert "no positive folders" in caplog.text


def test_the_report_counts_each_split_s_examples_and_positives_per_label(ingested):
    out, _ = ingested
    report = json.loads((out / REPORT_FILE).read_text())
    for split in ("train", "eval"):
        labels = np.array([e.features.feature["label"].int64_list.value for e in read_split(out, split)])
        assert report["label_counts"][split] == {"examples": len(labels),
                                                 **{name: int(labels[:, i].sum()) for i, name in enumerate(LABELS)}}


def test_no_identifying_tag_reaches_the_outputs(ingested):
    out, _ = ingested
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    identifying = [str(ds.PatientName), str(ds.get("InstitutionName", "")), str(ds.get("PatientBirthDate", ""))]
    identifying = [value.encode() for value in identifying if value]
    assert identifying
    for path in out.rglob("*"):
        if path.is_file():
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            for value in identifying:
                assert value not in data, (path, value)


def test_ids_are_pseudonymised_with_the_salt_file_and_the_split_does_not_change(ingested, input_base, tmp_path):
    salt_file = tmp_path / "root" / "id_salt"
    component = DicomExampleGen(str(input_base), max_reject_share=0.25, id_salt_file=str(salt_file))
    out = tmp_path / "salted"
    run_example_gen(component, out)
    assert stat.S_IMODE(salt_file.stat().st_mode) == 0o600
    salt = salt_file.read_text().strip()
    assert len(salt) == 64
    reference = dicom_files(input_base)
    plain, _ = ingested
    for split in ("train", "eval"):
        examples = read_split(out, split)
        # The split hashes the patient ID as the file holds it, before the pseudonyms replace it.
        assert sorted(feature(e, "image_id") for e in examples) == sorted(
            feature(e, "image_id") for e in read_split(plain, split)), split
        for e in examples:
            ds = reference[feature(e, "image_id").decode()]
            for name, raw in (("patient_id", ds.PatientID), ("study_uid", ds.StudyInstanceUID),
                              ("series_uid", ds.SeriesInstanceUID)):
                expected = hashlib.sha256(f"{salt}\x00{raw}".encode()).hexdigest()[:16]
                assert feature(e, name).decode() == expected, name
    # The salt is in its file only: not in the execution properties (the metadata store) nor beside the Examples.
    assert salt not in json.dumps({key: str(value) for key, value in component.exec_properties.items()})
    for path in out.rglob("*"):
        if path.is_file():
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
            assert salt.encode() not in data, path


def test_a_folder_of_garbage_fails_with_a_clear_message(tmp_path):
    base = tmp_path / "garbage"
    images = base / IMAGES_DIR
    images.mkdir(parents=True)
    for i in range(5):
        (images / f"junk{i}.dcm").write_bytes(np.random.default_rng(i).bytes(500))
    shutil.copy(get_testdata_file("CT_small.dcm"), images / "ct.dcm")
    ct_small_id = pydicom.dcmread(get_testdata_file("CT_small.dcm")).SOPInstanceUID
    (base / LABELS_CSV).write_text("ID,Label\n" + "".join(f"{ct_small_id}_{name},0\n" for name in LABELS))
    with pytest.raises(ValueError, match=r"5 of 6 input files \(83\.3%\) were rejected, more than the allowed "
                                         r"5\.0% \(not_dicom 5\)"):
        run_example_gen(DicomExampleGen(str(base)), tmp_path / "out")
    assert math.isclose(json.loads((tmp_path / "out" / REPORT_FILE).read_text())["rejected_share"], 5 / 6)


def test_an_empty_split_is_a_clear_error(tmp_path):
    base = tmp_path / "one-patient"
    generate_dataset(base, patients=1, slices_per_study=2, seed=0, size=64, progress=False)
    with pytest.raises(ValueError, match="received no examples: splitting is by patient"):
        run_example_gen(DicomExampleGen(str(base)), tmp_path / "out")
