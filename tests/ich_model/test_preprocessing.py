"""The tf.Transform preprocessing against a numpy reference of the same maths, on real files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tensorflow as tf
from pydicom.data import get_testdata_file

from ich_model import reference
from ich_model.dicom import read_slice
from ich_model.examples import SlicePlacement, slice_to_example
from ich_model.preprocessing import apply_window, preprocess_dicom, slice_rgb, windowed_rgb
from ich_model.synth import plan_studies
from ich_model.synth.dataset import write_study

# The seed's windows as its specification gives them, (level, width), in RGB order: the constants are
# checked against these, not against themselves.
BLOOD, BRAIN, BONE = (75.0, 215.0), (40.0, 80.0), (600.0, 2800.0)


@pytest.fixture(scope="module")
def ct_files(tmp_path_factory) -> list[Path]:
    """pydicom's CT_small (128x128), and synthetic slices at 512x512, 638x490 and 96x96 in several storage
    profiles (the RSNA wrapped quirk among them)."""
    folder = tmp_path_factory.mktemp("ct")
    base = plan_studies(2, 2, seed=8, size=512)[0]
    for shape, profile in (((512, 512), 0), ((638, 490), 4), ((96, 96), 2)):
        write_study(dataclasses.replace(base, shape=shape, profile_index=profile,
                                        image_ids=tuple(f"{i}_{shape[0]}" for i in base.image_ids)), folder)
    return [Path(get_testdata_file("CT_small.dcm")), *sorted(folder.glob("*.dcm"))]


def raw_features(path: Path) -> tuple:
    ct = read_slice(path)
    return (tf.constant(ct.pixels.astype("<i2").tobytes()), tf.constant(ct.height, tf.int64),
            tf.constant(ct.width, tf.int64), tf.constant(ct.rescale_slope), tf.constant(ct.rescale_intercept))


def test_windows_before_resizing_match_numpy(ct_files):
    for path in ct_files:
        expected = reference.windows_rgb(reference.rsna_hounsfield(pydicom.dcmread(path)))
        got = slice_rgb(*raw_features(path)).numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=str(path))


def test_model_input_after_resizing_matches_numpy(ct_files):
    for path in ct_files:
        expected = reference.resize(reference.windows_rgb(reference.rsna_hounsfield(pydicom.dcmread(path))))
        got = preprocess_dicom(path)
        assert got.shape == (256, 256, 3) and got.dtype == np.float32
        assert got.min() >= 0.0 and got.max() <= 1.0
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=str(path))


def test_model_windows_are_the_seeds():
    from ich_model.constants import RGB_WINDOWS

    assert [(w.level, w.width) for w in RGB_WINDOWS] == [BLOOD, BRAIN, BONE]


@pytest.mark.parametrize("window", ["blood", "brain", "bone"])
def test_each_window_maps_its_level_to_half_and_its_edges_to_zero_and_one(window):
    from ich_model.constants import BLOOD_WINDOW, BONE_WINDOW, BRAIN_WINDOW

    w = {"blood": BLOOD_WINDOW, "brain": BRAIN_WINDOW, "bone": BONE_WINDOW}[window]
    level, width = {"blood": BLOOD, "brain": BRAIN, "bone": BONE}[window]
    hu = tf.constant([level, level - width / 2, level + width / 2, level - width, level + width])
    np.testing.assert_allclose(apply_window(hu, w).numpy(), [0.5, 0.0, 1.0, 0.0, 1.0], atol=1e-6)


def test_channels_are_blood_brain_bone_in_that_order():
    hu = tf.constant([[75.0, 40.0, 600.0]])
    rgb = windowed_rgb(hu).numpy()[0]
    assert rgb[0, 0] == pytest.approx(0.5)  # blood level in R
    assert rgb[1, 1] == pytest.approx(0.5)  # brain level in G
    assert rgb[2, 2] == pytest.approx(0.5)  # bone level in B
    assert rgb[0].tolist() == pytest.approx([0.5, (75 - 0) / 80, (75 + 800) / 2800])


def test_preprocess_dicom_and_the_example_path_agree(ct_files):
    """preprocess_dicom (one file) and images_from_raw (a batch of parsed Examples) are the same ops."""
    from ich_model.examples import RAW_FEATURE_SPEC
    from ich_model.preprocessing import images_from_raw

    serialized = [slice_to_example(read_slice(p), SlicePlacement(0, 1), np.zeros(6, int)).SerializeToString()
                  for p in ct_files]
    batch = tf.io.parse_example(serialized, RAW_FEATURE_SPEC)
    images = images_from_raw(batch).numpy()
    for image, path in zip(images, ct_files, strict=True):
        np.testing.assert_allclose(image, preprocess_dicom(path), atol=1e-6)
