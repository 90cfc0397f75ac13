"""`ich predict` on real DICOM files: its probabilities equal the SavedModel's on the ExampleGen's own Examples of
the same slices, the RSNA CSV has six rows per image in RSNA order, the study summary is the per-study maximum,
a broken file is reported and skipped; each slice carries the ensemble's OOD score and flag and each study their
median and its flag, and a member export (no OOD model) is scored without them."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tensorflow as tf

from components.dicom_example_gen import DicomExampleGen
from ich_model.constants import LABELS, SUBTYPES
from ich_model.model.presets import build_cascade
from ich_model.serving import OOD_SCORE, OUT_OF_DISTRIBUTION, PROBABILITIES, SERVING_SIGNATURE, SPREAD
from ich_model.synth import IMAGES_DIR, generate_dataset
from tests.crafted_dicom import BOMBS
from tests.pipeline_helpers import export_ensemble, read_split, run_example_gen, run_transform


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A synthetic set with one broken file, an ensemble of three tiny members, and `ich predict` on the set."""
    from pipeline.cli import main

    root = tmp_path_factory.mktemp("predict")
    generate_dataset(root / "rsna", patients=4, slices_per_study=4, seed=17, size=64, positive_fraction=1.0,
                     progress=False)
    examples = run_example_gen(DicomExampleGen(str(root / "rsna"), train_share=0.5), root / "examples")
    (root / "rsna" / IMAGES_DIR / "ID_broken.dcm").write_bytes(b"not a DICOM file at all")
    run_transform(root / "examples", root / "transform", root / "tft-tmp")
    ensemble_dir = export_ensemble(root / "transform", [build_cascade("tiny", seed=seed) for seed in (1, 2, 3)],
                                   root)
    serving = root / "serving"  # as the Pusher leaves it: one folder per pushed version
    serving.mkdir()
    tf.io.gfile.rename(ensemble_dir, str(serving / "1700000000"))

    outputs = {}
    for output_format in ("rsna", "wide", "json"):
        out = root / f"{output_format}.{'json' if output_format == 'json' else 'csv'}"
        assert main(["predict", str(root / "rsna"), "--model", str(serving), "--format", output_format,
                     "--out", str(out), "--batch-size", "5"]) == 0
        outputs[output_format] = out
    return root, examples, serving / "1700000000", outputs


def reference(root, model_dir) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """image ID -> (probabilities, spread, study) from the SavedModel on the ExampleGen's Examples."""
    examples = read_split(root / "examples", "train") + read_split(root / "examples", "eval")
    outputs = tf.saved_model.load(str(model_dir)).signatures[SERVING_SIGNATURE](
        examples=tf.constant([e.SerializeToString() for e in examples]))
    result = {}
    for index, example in enumerate(examples):
        feature = example.features.feature
        result[feature["image_id"].bytes_list.value[0].decode()] = (
            outputs[PROBABILITIES].numpy()[index], outputs[SPREAD].numpy()[index],
            feature["study_uid"].bytes_list.value[0].decode())
    return result


def test_predictions_equal_the_savedmodel_on_the_examplegen_examples(scored):
    root, _, model_dir, outputs = scored
    expected = reference(root, model_dir)
    document = json.loads(outputs["json"].read_text())
    assert document["labels"] == list(LABELS)
    assert {s["image_id"] for s in document["slices"]} == set(expected)
    for row in document["slices"]:
        probabilities, spread, study = expected[row["image_id"]]
        np.testing.assert_allclose(row["probabilities"], probabilities, atol=1e-5)
        np.testing.assert_allclose(row["spread"], spread, atol=1e-5)
        assert row["study_uid"] == study
    assert [(s["reason"], s["path"].endswith("ID_broken.dcm")) for s in document["skipped"]] == [("not_dicom", True)]

    # Study summary: per label, the maximum over the study's slices.
    for study, figures in document["studies"].items():
        rows = np.array([p for p, _, s in expected.values() if s == study])
        np.testing.assert_allclose([figures[label] for label in LABELS], rows.max(axis=0), atol=1e-5)


def served_ood(model_dir) -> tuple[dict[str, tuple[float, float, str]], float]:
    """image ID -> (OOD score, flag, study) from the SavedModel on the ExampleGen's Examples, and its threshold."""
    root = model_dir.parent.parent
    examples = read_split(root / "examples", "train") + read_split(root / "examples", "eval")
    loaded = tf.saved_model.load(str(model_dir))
    outputs = loaded.signatures[SERVING_SIGNATURE](examples=tf.constant([e.SerializeToString() for e in examples]))
    return {e.features.feature["image_id"].bytes_list.value[0].decode(): (
        float(outputs[OOD_SCORE][i]), float(outputs[OUT_OF_DISTRIBUTION][i]),
        e.features.feature["study_uid"].bytes_list.value[0].decode()) for i, e in enumerate(examples)}, float(
        loaded.ood_threshold.numpy())


def test_each_slice_carries_its_ood_score_and_each_study_the_median_and_its_flag(scored):
    _, _, model_dir, outputs = scored
    expected, threshold = served_ood(model_dir)
    document = json.loads(outputs["json"].read_text())
    assert document["ood_threshold"] == threshold
    for row in document["slices"]:
        score, flag, _ = expected[row["image_id"]]
        np.testing.assert_allclose(row[OOD_SCORE], score, rtol=1e-5)
        assert row[OUT_OF_DISTRIBUTION] is bool(flag)
    study_rows = list(csv.DictReader(outputs["wide"].with_name(f"{outputs['wide'].stem}_studies.csv").read_text()
                                     .splitlines()))
    assert len(study_rows) == len(document["studies"])
    for row in study_rows:
        median = np.median([score for score, _, study in expected.values() if study == row["study_uid"]])
        figures = document["studies"][row["study_uid"]]
        np.testing.assert_allclose([float(row["ood_score_median"]), figures["ood_score_median"]], median, rtol=1e-5)
        assert row[OUT_OF_DISTRIBUTION] == str(int(median > threshold))
        assert figures[OUT_OF_DISTRIBUTION] is bool(median > threshold)
    for row in csv.DictReader(outputs["wide"].read_text().splitlines()):
        score, flag, _ = expected[row["image_id"]]
        np.testing.assert_allclose(float(row[OOD_SCORE]), score, rtol=1e-5)
        assert row[OUT_OF_DISTRIBUTION] == str(int(flag))


def test_a_member_export_is_scored_without_ood_fields(scored, tmp_path):
    from pipeline.cli import main

    root, _, _, _ = scored
    member_dir = root / "member_a" / "Format-Serving"  # one member as its Trainer exports it: no OOD model
    assert main(["predict", str(root / "rsna"), "--model", str(member_dir), "--format", "wide",
                 "--out", str(tmp_path / "wide.csv")]) == 0
    assert main(["predict", str(root / "rsna"), "--model", str(member_dir), "--format", "json",
                 "--out", str(tmp_path / "scores.json")]) == 0
    header = next(csv.reader((tmp_path / "wide.csv").read_text().splitlines()))
    studies_header = next(csv.reader((tmp_path / "wide_studies.csv").read_text().splitlines()))
    document = json.loads((tmp_path / "scores.json").read_text())
    assert OOD_SCORE not in header and OUT_OF_DISTRIBUTION not in studies_header and "ood_threshold" not in document
    assert document["slices"] and all(OOD_SCORE not in row for row in document["slices"])


def test_the_rsna_csv_has_six_rows_per_image_in_rsna_order(scored):
    root, _, model_dir, outputs = scored
    expected = reference(root, model_dir)
    rows = list(csv.reader(outputs["rsna"].read_text().splitlines()))
    assert rows[0] == ["ID", "Label"]
    body = rows[1:]
    assert len(body) == 6 * len(expected)
    for start in range(0, len(body), 6):
        image_ids = {key.rpartition("_")[0] for key, _ in body[start:start + 6]}
        assert len(image_ids) == 1
        image_id = image_ids.pop()
        assert [key.rpartition("_")[2] for key, _ in body[start:start + 6]] == [
            "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
        np.testing.assert_allclose([float(v) for _, v in body[start:start + 6]], expected[image_id][0], atol=1e-5)
    studies = list(csv.reader(outputs["rsna"].with_name(f"{outputs['rsna'].stem}_studies.csv").read_text()
                              .splitlines()))
    assert studies[0] == ["study_uid", *(f"{label}_max" for label in LABELS), *(f"{label}_flagged" for label in LABELS),
                          "ood_score_median", OUT_OF_DISTRIBUTION]
    assert len(studies) - 1 == len({study for *_, study in expected.values()})
    # A slice ensemble has no operating points: a study is flagged where its slice maximum reaches 0.5.
    for study, *values in studies[1:]:
        maximum = np.max([p for p, _, s in expected.values() if s == study], axis=0)
        assert values[len(LABELS):2 * len(LABELS)] == [str(int(v)) for v in maximum >= 0.5]


def test_the_wide_csv_has_one_row_per_slice_with_probabilities_and_spreads(scored):
    root, _, model_dir, outputs = scored
    expected = reference(root, model_dir)
    rows = list(csv.DictReader(outputs["wide"].read_text().splitlines()))
    assert len(rows) == len(expected)
    for row in rows:
        probabilities, spread, _ = expected[row["image_id"]]
        np.testing.assert_allclose([float(row[label]) for label in LABELS], probabilities, atol=1e-5)
        np.testing.assert_allclose([float(row[f"{label}_spread"]) for label in LABELS], spread, atol=1e-5)


def test_explain_writes_one_titled_picture_per_slice_and_subtype_called_positive(scored, tmp_path):
    from PIL import Image

    from ich_model.predict import predict

    root, _, model_dir, _ = scored
    threshold = 0.5
    result = predict([root / "rsna"], model_dir, progress=False, explain_dir=tmp_path, explain_threshold=threshold)
    expected = {f"{image_id}_{subtype}.png"
                for image_id, probabilities in zip(result.image_ids, result.probabilities, strict=True)
                for subtype, p in zip(SUBTYPES, probabilities, strict=False) if p >= threshold}
    assert result.member_probabilities.shape == (len(result.image_ids), 3, len(LABELS))
    np.testing.assert_allclose(result.member_probabilities.mean(axis=1), result.probabilities, atol=1e-6)
    assert expected, "untrained members near 0.5 should call some subtypes positive"
    assert {path.name for path in result.explained} == expected
    assert {path.name for path in tmp_path.iterdir()} == expected
    with Image.open(next(iter(result.explained))) as picture:
        assert picture.format == "PNG" and min(picture.size) >= 400
        colours = picture.convert("RGB").getcolors(maxcolors=1 << 20)
        assert any(r != g or g != b for _, (r, g, b) in colours), "no heat overlaid on the grey slice"


def test_a_study_model_scores_whole_studies_with_refined_slices_and_the_study_head(scored, tmp_path):
    """The published study model: the RSNA rows hold the refined probabilities the study signature gives for the
    study's slices (taken from the ExampleGen, in another order), the wide rows the slice ensemble's beside them,
    `_studies.csv` the study head's beside the slice maximum; slices and studies are flagged at the operating points
    of the model's description; Grad-CAM still reads the members."""
    from ich_model import context
    from ich_model.context_model import GAPS, MASK, REFINED, STUDY
    from ich_model.description import read_description, write_description
    from ich_model.predict import predict
    from ich_model.study_serving import REFINED_PROBABILITIES, STUDY_PROBABILITIES
    from pipeline.cli import main
    from tests.pipeline_helpers import export_study_model, operating_points_at

    root, _, ensemble_dir, _ = scored
    ensemble = tf.saved_model.load(str(ensemble_dir))
    context_model = export_study_model(ensemble_dir, tmp_path / "study")
    serve = tf.saved_model.load(str(tmp_path / "study")).signatures[SERVING_SIGNATURE]
    by_study: dict[str, list] = {}
    for example in read_split(root / "examples", "eval") + read_split(root / "examples", "train"):
        by_study.setdefault(example.features.feature["study_uid"].bytes_list.value[0].decode(), []).append(example)
    refined, slice_only, heads = {}, {}, {}
    for study, examples in by_study.items():
        outputs = serve(examples=tf.constant([e.SerializeToString() for e in reversed(examples)]))
        heads[study] = outputs[STUDY_PROBABILITIES].numpy()
        for index, example in enumerate(reversed(examples)):
            image_id = example.features.feature["image_id"].bytes_list.value[0].decode()
            refined[image_id] = outputs[REFINED_PROBABILITIES].numpy()[index]
            slice_only[image_id] = outputs[PROBABILITIES].numpy()[index]
    assert any(np.abs(refined[i] - slice_only[i]).max() > 1e-3 for i in refined)  # the context model acts

    # A study of one slice: no neighbour on either side, so both gaps are 0, as the model run by hand on it sees.
    single = tf.constant([read_split(root / "examples", "eval")[0].SerializeToString()])
    alone, slice_outputs = serve(examples=single), ensemble.signatures[SERVING_SIGNATURE](examples=single)
    by_hand = context_model({context.EMBEDDING: tf.reshape(slice_outputs["embedding"], [1, 1, -1]),
                             context.PROBABILITIES: slice_outputs[PROBABILITIES][None],
                             context.SPREAD: slice_outputs[SPREAD][None], GAPS: tf.zeros([1, 1, 2]),
                             MASK: tf.ones([1, 1], tf.bool)}, training=False)
    np.testing.assert_allclose(alone[REFINED_PROBABILITIES].numpy(), by_hand[REFINED][0].numpy(), atol=1e-5)
    np.testing.assert_allclose(alone[STUDY_PROBABILITIES].numpy(), by_hand[STUDY][0].numpy(), atol=1e-5)

    # Operating points in its description, per label halfway between the two middle probabilities (slices, studies).
    def middle(values: list) -> np.ndarray:
        ordered = np.sort(np.stack(values), axis=0)
        return (ordered[len(ordered) // 2 - 1] + ordered[len(ordered) // 2]) / 2

    slice_thresholds, study_thresholds = middle(list(refined.values())), middle(list(heads.values()))
    description = read_description(tmp_path / "study")
    write_description(tmp_path / "study", {**description, "operating_points": operating_points_at(
        slice_thresholds, study_thresholds)})

    for output_format in ("rsna", "wide", "json"):
        assert main(["predict", str(root / "rsna"), "--model", str(tmp_path / "study"), "--format", output_format,
                     "--out", str(tmp_path / f"{output_format}.csv")]) == 0
    rows = list(csv.DictReader((tmp_path / "rsna.csv").read_text().splitlines()))
    assert len(rows) == len(refined) * len(LABELS)
    for row in rows:
        image_id, label = row["ID"].rsplit("_", 1)
        assert float(row["Label"]) == pytest.approx(refined[image_id][LABELS.index(label)], abs=1e-5)
    flagged_slices = 0
    for row in csv.DictReader((tmp_path / "wide.csv").read_text().splitlines()):
        np.testing.assert_allclose([float(row[label]) for label in LABELS], refined[row["image_id"]], atol=1e-5)
        np.testing.assert_allclose([float(row[f"{label}_slice_only"]) for label in LABELS],
                                   slice_only[row["image_id"]], atol=1e-5)
        flagged = [row[f"{label}_flagged"] == "1" for label in LABELS]
        assert flagged == list(refined[row["image_id"]] >= slice_thresholds)
        flagged_slices += flagged[-1]
    assert 0 < flagged_slices < len(refined)  # the medians split the slices
    studies = list(csv.DictReader((tmp_path / "wide_studies.csv").read_text().splitlines()))
    assert len(studies) == len(heads)
    document = json.loads((tmp_path / "json.csv").read_text())
    assert document["operating_points"]["chosen_by_model"] is True
    assert document["operating_points"]["study"] == pytest.approx(dict(zip(LABELS, study_thresholds, strict=True)),
                                                                   abs=1e-6)
    for row in studies:
        np.testing.assert_allclose([float(row[label]) for label in LABELS], heads[row["study_uid"]], atol=1e-5)
        expected = [label for label, p, t in zip(LABELS, heads[row["study_uid"]], study_thresholds, strict=True)
                    if p >= t]
        assert [label for label in LABELS if row[f"{label}_flagged"] == "1"] == expected
        assert document["studies"][row["study_uid"]]["flagged"] == expected
        ids = [e.features.feature["image_id"].bytes_list.value[0].decode() for e in by_study[row["study_uid"]]]
        np.testing.assert_allclose([float(row[f"{label}_max"]) for label in LABELS],
                                   np.max([slice_only[i] for i in ids], axis=0), atol=1e-5)

    explained = predict([root / "rsna"], tmp_path / "study", progress=False, explain_dir=tmp_path / "cam",
                        explain_threshold=0.5)
    assert explained.explained and explained.member_probabilities.shape[1] == 3


def test_bad_arguments_existing_outputs_and_unscorable_input_are_refused(scored, tmp_path, capsys):
    from pipeline.cli import main

    root, _, model_dir, outputs = scored
    for batch_size, reason in (("0", "0 is not at least 1"), ("-1", "-1 is not at least 1"),
                               ("x", "'x' is not a whole number")):
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", str(root / "rsna"), "--model", str(model_dir), "--batch-size", batch_size])
        assert exit_info.value.code == 2 and f"--batch-size: {reason}" in capsys.readouterr().err, batch_size

    # An output that exists is kept unless told; a DICOM file never is, whatever the flags.
    written = outputs["rsna"].read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(root / "rsna"), "--model", str(model_dir), "--out", str(outputs["rsna"])])
    assert exit_info.value.code == 2 and "pass --overwrite" in capsys.readouterr().err
    assert outputs["rsna"].read_bytes() == written
    dicom = next(path for path in sorted((root / "rsna" / IMAGES_DIR).glob("*.dcm")) if "broken" not in path.name)
    original = dicom.read_bytes()
    for flags in ([], ["--overwrite"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", str(root / "rsna"), "--model", str(model_dir), "--out", str(dicom), *flags])
        assert exit_info.value.code == 2 and "never writes over one" in capsys.readouterr().err
    assert dicom.read_bytes() == original
    assert main(["predict", str(root / "rsna"), "--model", str(model_dir), "--out", str(outputs["rsna"]),
                 "--overwrite"]) == 0

    # Nothing scorable: a non-zero exit and no output.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.dcm").write_bytes(b"not a DICOM file at all")
    assert main(["predict", str(tmp_path / "broken"), "--model", str(model_dir),
                 "--out", str(tmp_path / "none.csv")]) == 2
    assert "nothing could be scored" in capsys.readouterr().err
    assert not (tmp_path / "none.csv").exists() and not (tmp_path / "none_studies.csv").exists()


def copy_slices(root, folder, count: int) -> list:
    """The first `count` readable slices of the scored set, copied into a new `folder`; their paths there."""
    folder.mkdir()
    files = sorted(p for p in (root / "rsna" / IMAGES_DIR).glob("*.dcm") if "broken" not in p.name)[:count]
    for path in files:
        (folder / path.name).write_bytes(path.read_bytes())
    return [folder / path.name for path in files]


def test_a_copy_of_a_slice_under_another_name_is_scored_once_and_reported(scored, tmp_path):
    from ich_model.predict import predict

    root, _, model_dir, _ = scored
    folder = tmp_path / "with-copy"
    files = copy_slices(root, folder, 3)
    (folder / "copy.dcm").write_bytes(files[0].read_bytes())
    predictions = predict([folder], model_dir, progress=False)
    assert sorted(predictions.image_ids) == sorted(pydicom.dcmread(p).SOPInstanceUID for p in files)
    [skipped] = predictions.skipped  # files are read in name order: the copy comes after its original
    assert (skipped.reason, skipped.path) == ("duplicate_image", str(folder / "copy.dcm"))
    assert str(folder / files[0].name) in skipped.message


def test_decompression_bombs_in_a_batch_are_skipped_with_their_reason_and_the_rest_is_scored(scored, tmp_path):
    from ich_model.predict import predict

    root, _, model_dir, _ = scored
    folder = tmp_path / "with-bombs"
    files = copy_slices(root, folder, 3)
    for name, make in BOMBS.items():
        (folder / f"bomb-{name}.dcm").write_bytes(make(pydicom.dcmread(files[0])))
    predictions = predict([folder], model_dir, batch_size=2, progress=False)
    assert sorted(predictions.image_ids) == sorted(pydicom.dcmread(p).SOPInstanceUID for p in files)
    assert sorted((Path(s.path).name, s.reason) for s in predictions.skipped) == [
        ("bomb-deflate.dcm", "inflated_too_large"), ("bomb-jpeg2000.dcm", "size_mismatch"),
        ("bomb-jpeg2000_header_too.dcm", "image_too_large"),
        ("bomb-jpeg_ls.dcm", "size_mismatch"), ("bomb-rle.dcm", "image_too_large")]


def test_a_file_name_that_is_not_utf8_is_skipped_by_a_printable_name_and_the_rest_is_scored(scored, tmp_path,
                                                                                               capsys):
    from pipeline.cli import main

    root, _, model_dir, _ = scored
    folder = tmp_path / "names"
    files = copy_slices(root, folder, 2)
    with open(os.path.join(os.fsencode(folder), b"scan-\xe9.dcm"), "wb") as f:  # Latin-1 for "scan-é"
        f.write(files[0].read_bytes())
    out = tmp_path / "scores.csv"
    assert main(["predict", str(folder), "--model", str(model_dir), "--format", "wide", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "scan-\\xe9.dcm" in printed.out + printed.err and "bad_file_name" in printed.out + printed.err
    with open(out) as f:
        assert sorted(row["image_id"] for row in csv.DictReader(f)) == sorted(
            pydicom.dcmread(path).SOPInstanceUID for path in files)
