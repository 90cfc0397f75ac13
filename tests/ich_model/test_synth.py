"""`ich synth` against independent references: pydicom reads the files, numpy/scipy check the pixels."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from ich_model.constants import LABELS, SUBTYPES
from ich_model.reference import rsna_hounsfield
from ich_model.synth import IMAGES_DIR, LABELS_CSV, generate_dataset, plan_studies, render_study
from ich_model.synth.dataset import write_study
from ich_model.synth.scanner import ODD_SHAPES_AT_512, STORAGE_PROFILES
from ich_model.synth.tissue import Tissue

SET = dict(patients=8, slices_per_study=12, seed=3, size=256, positive_fraction=0.75)


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "set"
    summary = generate_dataset(out, workers=2, progress=False, **SET)
    truth = {}
    for plan in plan_studies(**SET):
        for s in render_study(plan).slices:
            truth[s.image_id] = s
    return out, summary, truth


def read_csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def lowest_storable_hu(ds: pydicom.Dataset) -> float:
    """Unsigned pixels cannot hold HU below what stored value 0 means (-1000 after the wrapped fix)."""
    if ds.PixelRepresentation == 1:
        return -np.inf
    intercept = float(ds.RescaleIntercept)
    return -1000.0 if intercept > -100 else intercept


def test_every_file_is_rsna_style_ct(synth_set):
    out, summary, truth = synth_set
    files = sorted((out / IMAGES_DIR).iterdir())
    assert len(files) == summary.slices == len(truth)
    for path in files:
        assert path.name.startswith("ID_") and path.suffix == ".dcm"
        raw = path.read_bytes()
        assert raw[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.Modality == "CT"
        assert ds.SOPInstanceUID == path.stem
        for tag in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
            assert str(ds[tag].value).startswith("ID_")
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns)
        assert ds.BitsAllocated == 16 and ds.BitsStored in (12, 16)
        assert ds.PixelRepresentation in (0, 1)
        assert float(ds.RescaleSlope) == 1.0
        assert float(ds.RescaleIntercept) in (-1024.0, -1000.0, 0.0, 1.0)
        assert len(ds.ImagePositionPatient) == 3 and len(ds.ImageOrientationPatient) == 6
        assert len(ds.PixelSpacing) == 2
        for identifying in ("PatientName", "PatientBirthDate", "AccessionNumber", "InstitutionName",
                            "ReferringPhysicianName"):
            assert identifying not in ds


def test_pixels_round_trip_and_tissues_have_their_densities(synth_set):
    out, _, truth = synth_set
    by_tissue: dict[Tissue, list[np.ndarray]] = {t: [] for t in Tissue}
    for image_id, s in truth.items():
        ds = pydicom.dcmread(out / IMAGES_DIR / f"{image_id}.dcm")
        hu = rsna_hounsfield(ds)
        rows, cols = hu.shape
        yy, xx = np.mgrid[0:rows, 0:cols]
        in_fov = np.hypot(yy - (rows - 1) / 2, xx - (cols - 1) / 2) < 0.45 * min(rows, cols)
        expected = np.clip(np.rint(s.hu), lowest_storable_hu(ds), 3071)
        assert np.array_equal(hu[in_fov], expected[in_fov]), image_id
        for tissue in Tissue:
            by_tissue[tissue].append(hu[(s.tissue == tissue) & s.pure & in_fov])
    median = {t: float(np.median(np.concatenate(v))) for t, v in by_tissue.items() if sum(map(len, v))}
    assert -1010 <= median[Tissue.AIR] <= -990
    assert 700 <= median[Tissue.BONE] <= 1800
    assert 0 <= median[Tissue.CSF] <= 15
    assert 25 <= median[Tissue.WHITE_MATTER] < median[Tissue.GREY_MATTER] <= 45
    assert 50 <= median[Tissue.BLOOD] <= 90
    bone = np.concatenate(by_tissue[Tissue.BONE])
    assert np.percentile(bone, 5) >= 650 and np.percentile(bone, 95) <= 1850


def test_labelled_blood_is_visible_inside_the_skull(synth_set):
    out, _, truth = synth_set
    positives = 0
    for image_id, s in truth.items():
        hu = rsna_hounsfield(pydicom.dcmread(out / IMAGES_DIR / f"{image_id}.dcm"))
        cranium = ndimage.binary_fill_holes(hu > 300)
        for subtype in s.labels:
            positives += 1
            blood = s.blood[subtype]
            assert np.count_nonzero(blood >= 0.5) >= 4, (image_id, subtype)
            core = blood >= 0.9 if np.any(blood >= 0.9) else blood >= 0.5
            # Blood is drawn at 58-90 HU; a small core's median moves by a few HU with noise up to 10 HU.
            assert 48 <= np.median(hu[core]) <= 105, (image_id, subtype)
            assert cranium[core].mean() > 0.95, (image_id, subtype)
        for subtype in set(SUBTYPES) - s.labels:
            assert np.count_nonzero(s.blood[subtype] >= 0.5) == 0, (image_id, subtype)
    assert positives >= 20


def test_negative_slices_have_no_blood_density_inside_the_skull(synth_set):
    """From the pixels alone: away from bone (partial volume), denoised brain never reaches blood density."""
    out, _, truth = synth_set
    negatives = 0
    for image_id, s in truth.items():
        if s.labels:
            continue
        negatives += 1
        hu = rsna_hounsfield(pydicom.dcmread(out / IMAGES_DIR / f"{image_id}.dcm"))
        bone = hu > 300
        brain = ndimage.binary_fill_holes(bone) & ~ndimage.binary_dilation(bone, iterations=4)
        denoised = ndimage.median_filter(hu, size=5)
        assert not np.any(denoised[brain] >= 55), image_id
    assert negatives >= 20


def test_csv_is_rsna_long_format_and_matches_the_files(synth_set):
    out, summary, truth = synth_set
    rows = read_csv_rows(out / LABELS_CSV)
    assert rows[0] == ["ID", "Label"]
    body = rows[1:]
    assert len(body) == 6 * summary.slices
    files = {p.stem for p in (out / IMAGES_DIR).iterdir()}
    seen = set()
    for start in range(0, len(body), 6):
        group = body[start:start + 6]
        image_id = group[0][0].rsplit("_", 1)[0]
        assert [r[0] for r in group] == [f"{image_id}_{name}" for name in LABELS]
        values = [int(r[1]) for r in group]
        assert set(values) <= {0, 1}
        assert values[-1] == max(values[:-1])  # any = union of the subtypes
        assert values == truth[image_id].label_vector
        seen.add(image_id)
    assert seen == files


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    args = dict(patients=3, slices_per_study=3, seed=11, size=96)

    def digest(folder: Path) -> dict[str, str]:
        return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    generate_dataset(tmp_path / "a", workers=1, progress=False, **args)
    generate_dataset(tmp_path / "b", workers=2, progress=False, **args)
    generate_dataset(tmp_path / "c", workers=1, progress=False, **{**args, "seed": 12})
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


@pytest.mark.parametrize("profile_index", range(len(STORAGE_PROFILES)),
                         ids=[p.name for p in STORAGE_PROFILES])
def test_each_storage_profile_decodes_to_the_intended_hounsfield_units(tmp_path, profile_index):
    """Stored values, by the DICOM standard's HU = stored * slope + intercept (with the RSNA fix for the
    wrapped 12-bit files), give back the rendered HU; padding lies outside the reconstruction circle."""
    profile = STORAGE_PROFILES[profile_index]
    plan = dataclasses.replace(plan_studies(2, 2, seed=5, size=128)[0], profile_index=profile_index,
                               shape=(122, 94))
    write_study(plan, tmp_path)
    rendered = {s.image_id: s for s in render_study(plan).slices}
    for image_id, s in rendered.items():
        ds = pydicom.dcmread(tmp_path / f"{image_id}.dcm")
        assert (ds.Rows, ds.Columns) == (122, 94)
        assert ds.BitsStored == profile.bits_stored
        stored = ds.pixel_array.astype(np.int64)
        assert stored.min() >= (-(2 ** 15) if profile.pixel_representation else 0)
        assert stored.max() < 2 ** profile.bits_stored
        hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        if profile.wrapped:
            assert float(ds.RescaleIntercept) > -100 and ds.PixelRepresentation == 0
            fixed = stored + 1000
            fixed[fixed >= 4096] -= 4096
            hu = fixed - 1000
        inside = s.tissue != Tissue.AIR  # the head lies inside the reconstruction circle
        expected = np.clip(np.rint(s.hu[inside]), lowest_storable_hu(ds), 3071)
        assert np.array_equal(hu[inside], expected)
        if profile.padding_stored is not None:
            assert np.any(stored == profile.padding_stored)


def test_small_demo_plan_holds_every_quirk():
    plans = plan_studies(40, 32, seed=0)
    assert {p.profile_index for p in plans} == set(range(len(STORAGE_PROFILES)))
    odd = [p.shape for p in plans if p.shape != (512, 512)]
    assert odd and all(shape in ODD_SHAPES_AT_512 for shape in odd)
    assert len({p.patient_id for p in plans}) == 40 < len(plans)  # some patients have two studies
    assert 0.35 <= np.mean([p.bleeding for p in plans]) <= 0.45


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    ich = Path(sys.executable).with_name("ich")
    return subprocess.run([str(ich), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--patients", "0"], "--patients must be at least 1, got 0"),
    (["--slices-per-study", "0"], "--slices-per-study must be at least 1, got 0"),
    (["--size", "20"], "--size must be between 64 and 1024 pixels, got 20"),
    (["--positive-fraction", "1.5"], "--positive-fraction must be between 0 and 1, got 1.5"),
    (["--patients", "many"], "argument --patients: invalid int value: 'many'"),
])
def test_bad_arguments_give_a_clear_error(tmp_path, args, message):
    base = {"--out": str(tmp_path / "out"), "--patients": "1", "--slices-per-study": "1", "--seed": "0"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    result = run_cli("synth", *[x for pair in base.items() for x in pair])
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_writes_a_set_and_refuses_to_overwrite_it(tmp_path):
    args = ["synth", "--out", str(tmp_path), "--patients", "2", "--slices-per-study", "2", "--seed", "1",
            "--size", "64"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    slices = 2 * len(plan_studies(2, 2, seed=1, size=64))
    assert f"wrote {slices} slices" in first.stdout
    again = run_cli(*args)
    assert again.returncode == 2
    assert "already holds an RSNA-format set" in again.stderr
