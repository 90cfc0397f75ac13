"""preprocessing_fn under real tf.Transform on the ingested Examples: the saved transform graph reproduces
preprocess_dicom on the same files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import tensorflow as tf
import tensorflow_transform as tft
from pydicom.data import get_testdata_file

from components.dicom_example_gen import DicomExampleGen
from ich_model.examples import LABEL, RAW_FEATURE_SPEC
from ich_model.preprocessing import IMAGE, preprocess_dicom
from ich_model.synth import IMAGES_DIR, LABELS_CSV, generate_dataset
from tests.pipeline_helpers import read_split, run_example_gen, run_transform


def test_saved_transform_graph_reproduces_preprocess_dicom(tmp_path):
    base = tmp_path / "rsna"
    generate_dataset(base, patients=4, slices_per_study=2, seed=9, size=96, positive_fraction=1.0, progress=False)
    shutil.copy(get_testdata_file("CT_small.dcm"), base / IMAGES_DIR / "ct_small.dcm")
    ct_small_id = pydicom.dcmread(get_testdata_file("CT_small.dcm")).SOPInstanceUID
    with open(base / LABELS_CSV, "a") as f:
        f.writelines(f"{ct_small_id}_{name},{value}\n" for name, value in
                     zip(("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"),
                         (0, 0, 0, 1, 0, 1), strict=True))
    examples_dir = tmp_path / "examples"
    run_example_gen(DicomExampleGen(str(base), train_share=0.5), examples_dir)

    transform_dir = tmp_path / "transform"
    run_transform(examples_dir, transform_dir, tmp_path / "tft-tmp")

    output = tft.TFTransformOutput(str(transform_dir))
    examples = read_split(examples_dir, "train") + read_split(examples_dir, "eval")
    assert len(examples) == len(list((base / IMAGES_DIR).glob("*.dcm")))
    parsed = tf.io.parse_example([e.SerializeToString() for e in examples], RAW_FEATURE_SPEC)
    transformed = output.transform_raw_features(parsed)
    paths = {p.stem: p for p in (base / IMAGES_DIR).glob("*.dcm")}
    paths[ct_small_id] = base / IMAGES_DIR / "ct_small.dcm"
    for i, example in enumerate(examples):
        image_id = example.features.feature["image_id"].bytes_list.value[0].decode()
        np.testing.assert_allclose(transformed[IMAGE][i].numpy(), preprocess_dicom(Path(paths[image_id])),
                                   atol=1e-6, err_msg=image_id)
        labels = list(example.features.feature["label"].int64_list.value)
        assert transformed[LABEL][i].numpy().tolist() == labels
