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
from ich_model.synth.anatomy import HeadShape
from ich_model.synth.dataset import write_study
from ich_model.synth.lesions import BLOOD_HU, MIN_VISIBLE_PIXELS
from ich_model.synth.nuisance import SHIFTED, TRAINING, Nuisance, NuisanceRanges, Span
from ich_model.synth.scanner import ODD_SHAPES_AT_512, STORAGE_PROFILES
from ich_model.synth.tissue import Tissue

SET = dict(patients=8, slices_per_study=12, seed=3, size=256, positive_fraction=0.75)
LOWEST_BLOOD_HU = min(lo for lo, _ in BLOOD_HU.values())
DENSE_NOT_BLOOD = (Tissue.CALCIFICATION, Tissue.VENOUS_SINUS, Tissue.BONE)


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    """The written set, and per image its rendered slice (ground truth) and its study (the drawn nuisance)."""
    out = tmp_path_factory.mktemp("synth") / "set"
    summary = generate_dataset(out, workers=2, progress=False, **SET)
    truth, study_of = {}, {}
    for plan in plan_studies(**SET):
        study = render_study(plan)
        for s in study.slices:
            truth[s.image_id] = s
            study_of[s.image_id] = study
    return out, summary, truth, study_of


@pytest.fixture(scope="module", params=["training", "shifted"])
def rendered_set(request):
    """Rendered studies (not written) of a small set with the training or the shifted nuisance ranges."""
    plans = plan_studies(6, 12, seed=8, size=160, positive_fraction=0.75, shift=request.param == "shifted")
    return [render_study(plan) for plan in plans]


def true_hu(hu: np.ndarray, scan: Nuisance) -> np.ndarray:
    """Undo the study's calibration drift: the densities the tissues were drawn with."""
    return (hu - scan.hu_offset) / scan.hu_scale


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
    out, summary, truth, _ = synth_set
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
    """Densities once the study's calibration drift is undone, away from edges (the kernel spreads them by a
    pixel or two) and in studies without motion blur; air only where the storage can hold below -1024."""
    out, _, truth, study_of = synth_set
    by_tissue: dict[Tissue, list[np.ndarray]] = {t: [] for t in Tissue}
    for image_id, s in truth.items():
        ds = pydicom.dcmread(out / IMAGES_DIR / f"{image_id}.dcm")
        hu = rsna_hounsfield(ds)
        rows, cols = hu.shape
        yy, xx = np.mgrid[0:rows, 0:cols]
        in_fov = np.hypot(yy - (rows - 1) / 2, xx - (cols - 1) / 2) < 0.45 * min(rows, cols)
        expected = np.clip(np.rint(s.hu), lowest_storable_hu(ds), 3071)
        assert np.array_equal(hu[in_fov], expected[in_fov]), image_id
        scan = study_of[image_id].scan
        if scan.motion_mm > 0:
            continue
        density = true_hu(hu, scan)
        for tissue in Tissue:
            if tissue == Tissue.AIR and lowest_storable_hu(ds) > -np.inf:
                continue
            away_from_edges = ndimage.binary_erosion(s.pure & (s.tissue == tissue), iterations=2)
            by_tissue[tissue].append(density[away_from_edges & in_fov])
    median = {t: float(np.median(np.concatenate(v))) for t, v in by_tissue.items() if sum(map(len, v))}
    assert -1010 <= median[Tissue.AIR] <= -990
    assert 700 <= median[Tissue.BONE] <= 1800
    assert 0 <= median[Tissue.CSF] <= 15
    assert 20 <= median[Tissue.WHITE_MATTER] < median[Tissue.GREY_MATTER] <= 45
    assert 50 <= median[Tissue.BLOOD] <= 90
    bone = np.concatenate(by_tissue[Tissue.BONE])
    assert np.percentile(bone, 5) >= 550 and np.percentile(bone, 95) <= 1900


def test_labelled_blood_is_visible_inside_the_skull(synth_set):
    out, _, truth, study_of = synth_set
    positives = 0
    for image_id, s in truth.items():
        hu = true_hu(rsna_hounsfield(pydicom.dcmread(out / IMAGES_DIR / f"{image_id}.dcm")), study_of[image_id].scan)
        cranium = ndimage.binary_fill_holes(hu > 300)
        for subtype in s.labels:
            positives += 1
            blood = s.blood[subtype]
            assert np.count_nonzero(blood >= 0.5) >= 4, (image_id, subtype)
            full = np.any(blood >= 0.9)
            core = blood >= 0.9 if full else blood >= 0.5
            # Blood is drawn at 58-90 HU; a small core's median moves by a few HU with noise up to 11 HU. A thin
            # cross-section (no pixel nearly full), or one that motion smeared, is at least half blood, the rest
            # CSF (0-14 HU) or brain.
            sharp = full and study_of[image_id].scan.motion_mm == 0
            assert (48 if sharp else LOWEST_BLOOD_HU / 2) <= np.median(hu[core]) <= 105, (image_id, subtype)
            assert cranium[core].mean() > 0.95, (image_id, subtype)
        for subtype in set(SUBTYPES) - s.labels:
            assert np.count_nonzero(s.blood[subtype] >= 0.5) == 0, (image_id, subtype)
    assert positives >= 20


def test_negative_slices_have_no_blood_density_inside_the_skull(synth_set):
    """From the pixels: away from bone and from the dense structures that are not blood (calcifications, venous
    sinuses, bone fragments; further than the smoothing reaches), denoised brain never reaches blood density."""
    out, _, truth, study_of = synth_set
    negatives = 0
    for image_id, s in truth.items():
        if s.labels:
            continue
        negatives += 1
        hu = true_hu(rsna_hounsfield(pydicom.dcmread(out / IMAGES_DIR / f"{image_id}.dcm")), study_of[image_id].scan)
        dense = (hu > 300) | np.isin(s.tissue, DENSE_NOT_BLOOD)
        brain = ndimage.binary_fill_holes(hu > 300) & ~ndimage.binary_dilation(dense, iterations=10)
        denoised = ndimage.gaussian_filter(hu, 2.0)
        assert not np.any(denoised[brain] >= LOWEST_BLOOD_HU - 3), image_id
    assert negatives >= 20


def test_csv_is_rsna_long_format_and_matches_the_files(synth_set):
    out, summary, truth, _ = synth_set
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


@pytest.mark.parametrize("shift", [False, True], ids=["training", "shifted"])
def test_same_seed_same_bytes_whatever_the_workers(tmp_path, shift):
    args = dict(patients=3, slices_per_study=3, seed=11, size=96, shift=shift)

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


def test_shifted_plan_has_its_own_identifiers():
    """A shifted set and a training set of the same seed can be pooled: no identifier is shared."""
    training, shifted = plan_studies(6, 4, seed=0), plan_studies(6, 4, seed=0, shift=True)
    assert {p.nuisance for p in training} == {"training"} and {p.nuisance for p in shifted} == {"shifted"}
    ids = {plans: {i for p in plans for i in (p.patient_id, p.study_uid, *p.image_ids)}
           for plans in (tuple(training), tuple(shifted))}
    assert not ids[tuple(training)] & ids[tuple(shifted)]


def test_a_range_of_slices_per_study_draws_each_study_s_length_and_a_count_is_unchanged():
    ranged = plan_studies(30, (24, 40), seed=3)
    lengths = [len(p.image_ids) for p in ranged]
    assert min(lengths) >= 24 and max(lengths) <= 40 and len(set(lengths)) > 5
    assert [len(p.image_ids) for p in plan_studies(30, (24, 40), seed=3)] == lengths  # same seed, same set
    fixed, same_range = plan_studies(30, 12, seed=3), plan_studies(30, (12, 12), seed=3)
    assert {len(p.image_ids) for p in fixed} == {12} and fixed == same_range


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    ich = Path(sys.executable).with_name("ich")
    return subprocess.run([str(ich), *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--patients", "0"], "--patients must be at least 1, got 0"),
    (["--slices-per-study", "0"], "--slices-per-study must be at least 1, got 0"),
    (["--slices-per-study", "40-24"], "--slices-per-study: a range runs from low to high, got 40-24"),
    (["--slices-per-study", "many"], "--slices-per-study must be a count or a range such as 24-40, got 'many'"),
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


def test_cli_shift_writes_the_shifted_set(tmp_path):
    assert "--shift" in run_cli("synth", "--help").stdout
    result = run_cli("synth", "--out", str(tmp_path), "--patients", "2", "--slices-per-study", "2", "--seed", "1",
                     "--size", "64", "--shift")
    assert result.returncode == 0, result.stderr
    expected = {i for plan in plan_studies(2, 2, seed=1, size=64, shift=True) for i in plan.image_ids}
    assert {p.stem for p in (tmp_path / IMAGES_DIR).iterdir()} == expected


def test_labels_agree_with_pixels(rendered_set):
    """Only blood makes a label: each labelled subtype covers at least MIN_VISIBLE_PIXELS pixels by half and is
    blood in the tissue map; an unlabelled slice has no blood; slices with calcifications or dense sinuses but no
    blood carry no label; and dense structures that are not blood do show (> 80 HU inside the cranial cavity)."""
    dense_slices = hyperdense_pixels = 0
    for study in rendered_set:
        for s in study.slices:
            assert s.label_vector[-1] == int(any(s.label_vector[:-1]))
            for subtype in SUBTYPES:
                visible = int(np.count_nonzero(s.blood[subtype] >= 0.5))
                if subtype in s.labels:
                    assert visible >= MIN_VISIBLE_PIXELS, (s.image_id, subtype)
                    assert np.any((s.tissue == Tissue.BLOOD) & (s.blood[subtype] >= 0.5)), (s.image_id, subtype)
                else:
                    assert visible == 0, (s.image_id, subtype)
            if not s.labels:
                assert not np.any(s.tissue == Tissue.BLOOD), s.image_id
            structures = np.isin(s.tissue, (Tissue.CALCIFICATION, Tissue.VENOUS_SINUS))
            if structures.any():
                dense_slices += 1
                assert max(float(b[structures].max()) for b in s.blood.values()) < 0.5, s.image_id
                if not any(np.any(b > 0) for b in s.blood.values()):
                    assert not s.labels, s.image_id
            hu = true_hu(ndimage.gaussian_filter(s.hu, 1.0), study.scan)
            skull = hu > 300
            cavity = ndimage.binary_fill_holes(skull) & ~ndimage.binary_dilation(skull, iterations=3)
            no_blood = np.all([b < 0.05 for b in s.blood.values()], axis=0)
            hyperdense_pixels += int(np.count_nonzero(cavity & no_blood & (hu > 80)))
    assert dense_slices >= 10
    assert hyperdense_pixels >= 50


def _many_draws(ranges: NuisanceRanges, count: int = 3000) -> tuple[list[HeadShape], list[Nuisance]]:
    rng = np.random.default_rng(0)
    return [HeadShape.draw(rng, ranges) for _ in range(count)], [Nuisance.draw(rng, ranges) for _ in range(count)]


# Each field of NuisanceRanges, and how to read its draws off a patient's head (h) and a study's scan (n): values
# for a Span or a tuple of options, True/False per draw for a share.
DRAWN = {
    "half_width_mm": lambda h, n: [h.half_width_mm],
    "aspect": lambda h, n: [h.aspect],
    "outline_irregularity": lambda h, n: [amp for amp, _ in h.outline_harmonics],
    "skull_mm": lambda h, n: [h.skull_mm],
    "diploe_hu": lambda h, n: [h.diploe_hu],
    "cortical_hu": lambda h, n: [h.cortical_hu],
    "scalp_mm": lambda h, n: [h.scalp_mm] if h.scalp_mm > 0 else [],
    "scalp_absent_share": lambda h, n: h.scalp_mm == 0,
    "fat_hu": lambda h, n: [h.fat_hu],
    "soft_tissue_hu": lambda h, n: [h.soft_tissue_hu],
    "grey_matter_hu": lambda h, n: [h.grey_hu],
    "grey_white_contrast_hu": lambda h, n: [h.grey_hu - h.white_hu],
    "csf_hu": lambda h, n: [h.csf_hu],
    "atrophy": lambda h, n: [h.atrophy],
    "csf_rim_mm": lambda h, n: [h.csf_rim_mm],
    "calcification_hu": lambda h, n: [c.hu for c in h.calcifications],
    "pineal_calcification_share": lambda h, n: any(c.site == "pineal" for c in h.calcifications),
    "choroid_plexus_calcification_share": lambda h, n: any(c.site == "choroid plexus" for c in h.calcifications),
    "falx_calcification_share": lambda h, n: any(c.site == "falx" for c in h.calcifications),
    "basal_ganglia_calcification_share": lambda h, n: any(c.site == "basal ganglia" for c in h.calcifications),
    "venous_sinus_hu": lambda h, n: [h.venous_sinus_hu],
    "bone_fragment_share": lambda h, n: bool(h.bone_fragments),
    "bone_fragment_hu": lambda h, n: [f.hu for f in h.bone_fragments],
    "vertex_partial_volume": lambda h, n: [h.vertex_partial_volume],
    "brain_textures": lambda h, n: [n.brain_texture],
    "texture_hu": lambda h, n: [n.texture_hu],
    "texture_mm": lambda h, n: [n.texture_mm],
    "hu_offset": lambda h, n: [n.hu_offset],
    "hu_scale": lambda h, n: [n.hu_scale],
    "noise_hu": lambda h, n: [n.noise_hu],
    "noise_textures": lambda h, n: [n.noise_texture],
    "noise_grain_px": lambda h, n: [n.noise_grain_px],
    "sharpening": lambda h, n: [n.sharpening],
    "cupping_hu": lambda h, n: [n.cupping_hu],
    "streak_extents": lambda h, n: [n.streak_extent],
    "streak_count": lambda h, n: [n.streak_count],
    "streak_hu": lambda h, n: [n.streak_hu],
    "motion_share": lambda h, n: n.motion_mm > 0,
    "motion_mm": lambda h, n: [n.motion_mm] if n.motion_mm > 0 else [],
    "field_of_view_mm": lambda h, n: [n.field_of_view_mm],
    "centre_offset_mm": lambda h, n: [n.centre_offset_mm],
    "rotation_deg": lambda h, n: [n.rotation_deg],
    "gantry_tilt_share": lambda h, n: n.gantry_tilt_deg > 0,
    "gantry_tilt_deg": lambda h, n: [n.gantry_tilt_deg] if n.gantry_tilt_deg > 0 else [],
    "head_height_mm": lambda h, n: [n.head_height_mm],
}


def _draws(field: str, heads: list[HeadShape], scans: list[Nuisance]) -> list:
    per_draw = [DRAWN[field](h, n) for h, n in zip(heads, scans, strict=True)]
    return per_draw if isinstance(per_draw[0], bool) else [v for values in per_draw for v in values]


@pytest.mark.parametrize("ranges", [TRAINING, SHIFTED], ids=lambda r: r.name)
def test_every_nuisance_range_is_sampled(ranges):
    """Over many draws each interval of each range is covered to within a tenth of its ends (whole counts: to
    the last count), every option occurs and every share is met."""
    assert set(DRAWN) == {f.name for f in dataclasses.fields(NuisanceRanges)} - {"name"}
    heads, scans = _many_draws(ranges)
    for field in DRAWN:
        spec, draws = getattr(ranges, field), _draws(field, heads, scans)
        if isinstance(spec, Span):
            values = np.array(draws, dtype=float)
            assert all(v in spec for v in values), field
            for lo, hi in spec.intervals:
                inside = values[(values >= lo) & (values <= hi)]
                tolerance = 1.0 if all(isinstance(v, int) for v in draws) else 0.1 * (hi - lo)
                assert inside.size, (field, lo, hi)
                assert inside.min() <= lo + tolerance and inside.max() >= hi - tolerance, (field, lo, hi)
        elif isinstance(spec, tuple):
            assert set(draws) == set(spec), field
        else:
            assert abs(np.mean(draws) - spec) < 0.04, field


def test_shifted_draws_fall_outside_the_training_ranges():
    heads, scans = _many_draws(SHIFTED, 1000)
    for field in DRAWN:
        training, shifted = getattr(TRAINING, field), getattr(SHIFTED, field)
        if isinstance(training, Span):
            assert not shifted.overlaps(training), field
            assert not any(v in training for v in _draws(field, heads, scans)), field
    for options in ("brain_textures", "noise_textures"):  # models that training never sees
        assert not set(getattr(SHIFTED, options)) & set(getattr(TRAINING, options))


def test_drawn_noise_and_calibration_reach_the_pixels(tmp_path):
    """In files read back with pydicom: the noise sd in air far from the head is the drawn noise, and brain
    minus its drawn density (times the drawn slope) is the drawn offset, less at most the cupping."""
    plans = [dataclasses.replace(plan, profile_index=1)  # int16: air below -1024 is stored as it is
             for shift in (False, True) for plan in plan_studies(4, 3, seed=21, size=128, shift=shift)[:4]]
    offsets, residuals = [], []
    for plan in plans:
        write_study(plan, tmp_path)
        study = render_study(plan)
        scan, head = study.scan, study.head
        for s in study.slices:
            hu = rsna_hounsfield(pydicom.dcmread(tmp_path / f"{s.image_id}.dcm"))
            far_air = ndimage.distance_transform_edt(s.tissue == Tissue.AIR) > 8
            assert 0.85 <= hu[far_air].std() / scan.noise_hu <= 1.15, (s.image_id, scan.noise_hu)
        middle = study.slices[1]
        hu = rsna_hounsfield(pydicom.dcmread(tmp_path / f"{middle.image_id}.dcm"))
        grey, white = (ndimage.binary_erosion(middle.pure & (middle.tissue == t), iterations=2)
                       for t in (Tissue.GREY_MATTER, Tissue.WHITE_MATTER))
        drawn = np.where(grey, head.grey_hu, head.white_hu)[grey | white]
        residual = float(np.median(hu[grey | white] - scan.hu_scale * drawn))
        assert scan.hu_offset - scan.cupping_hu - 3 <= residual <= scan.hu_offset + 3, (plan.nuisance, scan)
        offsets.append(scan.hu_offset)
        residuals.append(residual)
    assert np.corrcoef(offsets, residuals)[0, 1] > 0.9
