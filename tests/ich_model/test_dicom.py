"""read_slice against pydicom's own decoding and modality LUT, on pydicom's real test files and on files the
tests write themselves (compressed, quirky, broken)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from ich_model.dicom import DicomRejected, read_header, read_slice, stored_pixels
from tests.crafted_dicom import BOMBS, dataset_bytes, deflated


def ct_small() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def test_ct_small_stored_pixels_and_hounsfield_units_match_pydicom():
    ds = ct_small()
    ct = read_slice(get_testdata_file("CT_small.dcm"))
    assert np.array_equal(ct.pixels, ds.pixel_array)
    assert np.array_equal(ct.hounsfield_units(), apply_modality_lut(ds.pixel_array, ds))
    assert (ct.rescale_slope, ct.rescale_intercept) == (float(ds.RescaleSlope), float(ds.RescaleIntercept))
    assert ct.image_id == ds.SOPInstanceUID and ct.study_uid == ds.StudyInstanceUID
    assert ct.z_position == pytest.approx(float(ds.ImagePositionPatient[2]))
    assert ct.pixel_spacing_mm == pytest.approx(float(ds.PixelSpacing[0]))
    assert ct.image_size == f"{ds.Rows}x{ds.Columns}"
    assert ct.intercept_group == "-1024" and ct.warnings == ()


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_compressed_files_decode_to_the_uncompressed_pixels(name):
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    decoded = stored_pixels(pydicom.dcmread(get_testdata_file(name)))
    assert np.array_equal(decoded, reference)
    with pytest.raises(DicomRejected) as rejected:
        read_slice(get_testdata_file(name))
    assert rejected.value.reason == "not_ct"


@pytest.mark.parametrize("name", ["JPGExtended.dcm", "SC_rgb_jpeg.dcm"])
def test_jpeg_baseline_and_extended_decode(name):
    ds = pydicom.dcmread(get_testdata_file(name))
    assert stored_pixels(ds).shape[:2] == (ds.Rows, ds.Columns)


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
def test_compressed_ct_comes_back_unchanged(syntax):
    ds = ct_small()
    reference = ds.pixel_array.copy()
    ds.compress(syntax)
    ct = read_slice(dataset_bytes(ds))
    assert np.array_equal(ct.pixels, reference)
    assert np.array_equal(ct.hounsfield_units(), apply_modality_lut(reference, ct_small()))


def cut_before_pixel_data(data: bytes) -> bytes:
    return data[: data.index(b"\xe0\x7f\x10\x00") - 6]


def multi_frame_ct() -> bytes:
    ds = ct_small()
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    return dataset_bytes(ds)


def rgb_ct() -> bytes:
    ds = ct_small()
    rgb = np.repeat((ds.pixel_array // 16).astype(np.uint8)[..., None], 3, axis=2)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    return dataset_bytes(ds)


BAD_INPUTS = {
    "MR_truncated.dcm": ("file", "MR_truncated.dcm", "not_ct"),
    "no_meta.dcm": ("file", "no_meta.dcm", "not_dicom"),
    "rtplan.dcm": ("file", "rtplan.dcm", "no_pixel_data"),
    "rtdose.dcm": ("file", "rtdose.dcm", "multi_frame"),
    "SC_rgb_small_odd.dcm": ("file", "SC_rgb_small_odd.dcm", "not_grayscale"),
    "truncated CT": ("bytes", lambda: dataset_bytes(ct_small())[:-4000], "truncated"),
    "cut before the pixel data": ("bytes", lambda: cut_before_pixel_data(dataset_bytes(ct_small())), "truncated"),
    "multi-frame CT": ("bytes", multi_frame_ct, "multi_frame"),
    "RGB CT": ("bytes", rgb_ct, "not_grayscale"),
    "empty": ("bytes", lambda: b"", "not_dicom"),
    "random bytes": ("bytes", lambda: np.random.default_rng(0).bytes(4096), "not_dicom"),
}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_unusable_input_is_rejected_with_its_reason(name):
    kind, source, reason = BAD_INPUTS[name]
    data = get_testdata_file(source) if kind == "file" else source()
    with pytest.raises(DicomRejected) as rejected:
        read_slice(data)
    assert rejected.value.reason == reason
    assert rejected.value.message


def test_header_reader_rejects_what_the_header_shows():
    assert read_header(get_testdata_file("CT_small.dcm")).image_id == ct_small().SOPInstanceUID
    for name, reason in [("rtplan.dcm", "no_pixel_data"), ("MR_small.dcm", "not_ct"),
                         ("rtdose.dcm", "multi_frame")]:
        with pytest.raises(DicomRejected) as rejected:
            read_header(get_testdata_file(name))
        assert rejected.value.reason == reason


def ct_with_pixels(hu_pixels: np.ndarray, *, bits_stored: int, signed: bool, intercept, slope="1") -> pydicom.Dataset:
    ds = ct_small()
    ds.Rows, ds.Columns = hu_pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = hu_pixels.astype(np.int16 if signed else np.uint16).tobytes()
    if intercept is None:
        del ds.RescaleIntercept
        del ds.RescaleSlope
    else:
        ds.RescaleIntercept, ds.RescaleSlope = intercept, slope
    return ds


# Known tissue densities, HU: air, fat, CSF, brain, blood, bone.
TRUE_HU = np.array([[-1000, -100, 5, 30, 40, 70], [1200, 1800, 60, 35, -1000, 3000]], dtype=np.int32)


def test_rsna_wrapped_12bit_pixels_give_true_hounsfield_units():
    """The RSNA quirk: a scanner wrote HU mod 4096 as 12-bit unsigned with intercept 1. By the DICOM standard
    (HU = stored * slope + intercept) those values are wrong; after the fix they are the true densities."""
    stored = np.mod(TRUE_HU, 4096)
    ds = ct_with_pixels(stored, bits_stored=12, signed=False, intercept="1")
    naive = stored * 1.0 + 1.0
    assert not np.array_equal(naive, TRUE_HU)
    ct = read_slice(dataset_bytes(ds))
    assert np.array_equal(ct.hounsfield_units(), TRUE_HU)
    assert ct.intercept_group == "wrapped" and "wrapped_pixels_fixed" in ct.warnings


@pytest.mark.parametrize("bits, signed, intercept", [(12, False, -1024), (16, True, -1024), (12, False, -1000),
                                                      (16, True, 0)])
def test_ordinary_rescale_tags_give_true_hounsfield_units(bits, signed, intercept):
    stored = TRUE_HU - intercept
    ds = ct_with_pixels(stored, bits_stored=bits, signed=signed, intercept=str(intercept))
    ct = read_slice(dataset_bytes(ds))
    assert np.array_equal(ct.hounsfield_units(), TRUE_HU)
    assert ct.intercept_group == f"{intercept}"


def test_unsigned_values_above_int16_keep_their_hounsfield_units():
    stored = TRUE_HU + 32768  # 16-bit unsigned with intercept -32768
    ds = ct_with_pixels(stored, bits_stored=16, signed=False, intercept="-32768")
    ct = read_slice(dataset_bytes(ds))
    assert np.array_equal(ct.hounsfield_units(), TRUE_HU)


def test_missing_rescale_tags_mean_identity_with_a_warning():
    ds = ct_with_pixels(TRUE_HU, bits_stored=16, signed=True, intercept=None)
    ct = read_slice(dataset_bytes(ds))
    assert (ct.rescale_slope, ct.rescale_intercept) == (1.0, 0.0)
    assert "missing_rescale" in ct.warnings
    assert np.array_equal(ct.hounsfield_units(), TRUE_HU)


def test_multi_valued_window_tags_take_the_first_value_and_any_size_is_kept():
    ds = ct_with_pixels(np.zeros((436, 374), np.int32) + 24, bits_stored=16, signed=True, intercept="-1024")
    ds.WindowCenter, ds.WindowWidth = ["36", "40"], ["80", "120"]
    ct = read_slice(dataset_bytes(ds))
    assert (ct.window_center, ct.window_width) == (36.0, 80.0)
    assert ct.pixels.shape == (436, 374) and ct.image_size == "436x374"


def series_slices(orientation: list[float], positions: np.ndarray) -> list[bytes]:
    """CT_small re-positioned: one file per position, all with the given ImageOrientationPatient, stored in an
    order unrelated to their positions (image IDs 0, 1, ... in the order given)."""
    files = []
    for index, position in enumerate(positions):
        ds = ct_small()
        ds.SOPInstanceUID = f"1.2.3.{index}"
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
        files.append(dataset_bytes(ds))
    return files


@pytest.mark.parametrize("orientation", [
    [1, 0, 0, 0, 0, -1],  # coronal: every slice at the same z
    [1, 0, 0, 0, np.cos(np.deg2rad(25)), -np.sin(np.deg2rad(25))],  # axial, gantry tilted 25 degrees
    [0, 1, 0, 0, 0, -1],  # sagittal
])
def test_slices_are_placed_along_the_normal_of_their_orientation(orientation):
    from ich_model.examples import place_slices

    normal = np.cross(orientation[:3], orientation[3:])
    rng = np.random.default_rng(3)
    offsets = rng.permutation(5) * 5.0  # 5 mm apart, stored out of order
    positions = np.array([10.0, -20.0, 30.0]) + offsets[:, None] * normal
    headers = [read_header(data) for data in series_slices(orientation, positions)]
    expected = np.array([np.dot(p, normal) for p in positions])  # numpy, from the headers as written
    np.testing.assert_allclose([h.slice_position_mm for h in headers], expected, atol=1e-3)
    np.testing.assert_allclose(np.diff(np.sort(expected)), 5.0, atol=1e-3)  # the slices' own spacing
    placements = place_slices(headers)
    assert [placements[h.image_id].slice_index for h in headers] == list(np.argsort(np.argsort(expected)))
    assert read_slice(series_slices(orientation, positions[:1])[0]).slice_position_mm == pytest.approx(expected[0],
                                                                                                       abs=1e-3)


def test_a_slice_without_orientation_is_taken_as_axial_and_one_without_position_goes_last():
    from ich_model.examples import place_slices

    with_position, without_orientation, without_position = (ct_small() for _ in range(3))
    for index, ds in enumerate((with_position, without_orientation, without_position)):
        ds.SOPInstanceUID = f"1.2.3.{index}"
    del without_orientation.ImageOrientationPatient
    del without_position.ImagePositionPatient
    headers = [read_header(dataset_bytes(ds)) for ds in (without_position, without_orientation, with_position)]
    assert headers[1].slice_position_mm == pytest.approx(float(without_orientation.ImagePositionPatient[2]))
    assert np.isnan(headers[0].slice_position_mm)
    assert place_slices(headers)["1.2.3.2"].slice_index == 2  # no position: last


@pytest.mark.parametrize("slope, intercept", [("NaN", "-1024"), ("inf", "-1024"), ("0", "-1024"), ("-1", "-1024"),
                                              ("1000", "-1024"), ("1", "NaN"), ("1", "-inf")])
def test_a_rescale_that_is_no_ct_modality_lut_is_rejected_with_its_values(slope, intercept):
    ds = ct_with_pixels(TRUE_HU + 1024, bits_stored=16, signed=True, intercept=intercept, slope=slope)
    with pytest.raises(DicomRejected) as rejected:
        read_slice(dataset_bytes(ds))
    assert rejected.value.reason == "bad_rescale" and "RescaleSlope" in rejected.value.message


def test_signed_pixels_written_as_unsigned_are_read_as_signed_with_a_warning():
    ds = ct_with_pixels(TRUE_HU, bits_stored=16, signed=False, intercept="0")  # air's -1000 stored as 64,536
    assert apply_modality_lut(ds.pixel_array, ds).max() > 60000  # what the tags say, read as written
    ct = read_slice(dataset_bytes(ds))
    assert np.array_equal(ct.hounsfield_units(), TRUE_HU) and "signed_pixels_fixed" in ct.warnings


def test_hounsfield_units_outside_any_ct_scale_are_rejected():
    ds = ct_with_pixels(TRUE_HU + 1024, bits_stored=16, signed=True, intercept="40000")
    with pytest.raises(DicomRejected) as rejected:
        read_slice(dataset_bytes(ds))
    assert rejected.value.reason == "bad_rescale" and "Hounsfield units from 40024" in rejected.value.message


@pytest.mark.parametrize("spacing", [["-0.5", "-0.5"], ["NaN", "0.5"], ["0", "0"], ["50", "50"]])
def test_impossible_pixel_spacing_is_left_out_with_a_warning(spacing):
    ds = ct_small()
    ds.PixelSpacing = spacing
    ct = read_slice(dataset_bytes(ds))
    assert ct.pixel_spacing_mm == 0.0 and "bad_pixel_spacing" in ct.warnings
    assert np.array_equal(ct.hounsfield_units(), apply_modality_lut(ct_small().pixel_array, ct_small()))


def test_a_position_that_is_not_finite_counts_as_missing():
    ds = ct_small()
    ds.ImagePositionPatient = ["NaN", "0", "10"]
    assert read_slice(dataset_bytes(ds)).image_position is None
    header = read_header(dataset_bytes(ds))
    assert np.isnan(header.z_position) and np.isnan(header.slice_position_mm)


@pytest.mark.parametrize("bomb, reason, declared, size", [
    ("jpeg2000", "size_mismatch", "codestream declares 40000 x 40000 pixels, the DICOM header 128 x 128", 30_000),
    ("jpeg_ls", "size_mismatch", "codestream declares 40000 x 40000 pixels, the DICOM header 128 x 128", 30_000),
    ("jpeg2000_header_too", "image_too_large", "40000 x 40000 pixels declared", 30_000),
    ("rle", "image_too_large", "40000 x 40000 pixels declared", 30_000),
    # pydicom alone peaked at 2.1 GB on this file, measured here.
    ("deflate", "inflated_too_large", "inflates to more than 34,603,008 bytes", 1_100_000),
])
def test_a_decompression_bomb_is_rejected_before_anything_is_decoded(bomb, reason, declared, size):
    data = BOMBS[bomb](ct_small())
    assert len(data) < size
    with pytest.raises(DicomRejected) as rejected:
        read_slice(data)
    assert rejected.value.reason == reason and declared in str(rejected.value)


def test_a_deflated_slice_reads_as_the_same_slice_uncompressed():
    assert np.array_equal(read_slice(deflated(ct_small())).pixels, ct_small().pixel_array)


def test_a_batch_with_bombs_in_it_peaks_at_the_memory_of_the_same_batch_without_them(tmp_path):
    """Peak resident memory of a process reading six slices, then of one reading them beside the five bombs."""
    valid, with_bombs = tmp_path / "valid", tmp_path / "with-bombs"
    for folder in (valid, with_bombs):
        folder.mkdir()
        for index in range(6):
            (folder / f"slice-{index}.dcm").write_bytes(dataset_bytes(ct_small()))
    for name, make in BOMBS.items():
        (with_bombs / f"bomb-{name}.dcm").write_bytes(make(ct_small()))
    script = textwrap.dedent("""
        import resource, sys
        from pathlib import Path
        from ich_model.dicom import DicomRejected, read_slice
        reasons = []
        for path in sorted(Path(sys.argv[1]).iterdir()):
            try:
                read_slice(path)
                reasons.append("read")
            except DicomRejected as rejected:
                reasons.append(rejected.reason)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, ",".join(reasons))
    """)

    def peak(folder):
        done = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=True,
                              timeout=300)
        kilobytes, reasons = done.stdout.split()
        return int(kilobytes), reasons.split(",")

    without, read = peak(valid)
    within, outcomes = peak(with_bombs)
    assert read == ["read"] * 6
    assert sorted(outcomes) == sorted(["image_too_large", "image_too_large", "size_mismatch", "size_mismatch",
                                       "inflated_too_large"] + ["read"] * 6)
    assert within <= 1.5 * without, (within, without)


def test_a_name_that_is_not_utf8_is_rejected_by_name_and_a_symlink_loop_is_listed_once(tmp_path):
    from ich_model.dicom import list_input_files, printable_path

    (tmp_path / "sub").mkdir()
    good = tmp_path / "sub" / "slice.dcm"
    good.write_bytes(dataset_bytes(ct_small()))
    bad = os.path.join(os.fsencode(tmp_path), b"bad-\xff\xfe.dcm")  # Latin-1 bytes, as an old share writes them
    with open(bad, "wb") as f:
        f.write(dataset_bytes(ct_small()))
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)

    listed = list(list_input_files(str(tmp_path)))
    assert sorted(map(printable_path, listed)) == sorted([f"{tmp_path}/bad-\\xff\\xfe.dcm", str(good)])
    [name] = [path for path in listed if "bad" in printable_path(path)]
    with pytest.raises(DicomRejected) as rejected:
        read_slice(name)
    assert rejected.value.reason == "bad_file_name" and "not valid UTF-8" in str(rejected.value)
    assert np.array_equal(read_slice(str(good)).pixels, ct_small().pixel_array)
