"""StudySequenceGen on real DICOM through the real ExampleGen, Transform and Ensemble executors: its records against
numpy's order along the slice normal computed from pydicom's reading of the headers, the SavedModel's own outputs on
the same slices and the label CSV; a slice without a position, two slices at one position and a study of two series,
counted in the report; the patient split kept. And the published study model: its signature, given a study's slice
Examples in any order, equals the two stages run by hand (these records through the context model); and the context
model trained by the real TFX Trainer executor reports eval figures that numpy finds in its export's outputs."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from sklearn.metrics import recall_score, roc_auc_score, roc_curve
from tfx.components.trainer.executor import GenericExecutor
from tfx.proto import trainer_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import path_utils, proto_utils

from components.dicom_example_gen import DicomExampleGen
from components.study_evaluator import executor as evaluator
from components.study_sequences.executor import EXAMPLES_KEY, MODEL_KEY, REPORT_FILE, STUDY_SEQUENCES_KEY, Executor
from ich_model import context
from ich_model.constants import LABELS, NUM_LABELS
from ich_model.context_model import REFINED, STUDY, build_context_model, parse_record
from ich_model.description import read_description, study_description
from ich_model.labels import read_rsna_labels
from ich_model.metrics import weighted_log_loss
from ich_model.model.presets import build_cascade
from ich_model.serving import EMBEDDING, PROBABILITIES, SERVING_SIGNATURE, SPREAD
from ich_model.study_serving import (
    REFINED_PROBABILITIES,
    SERIES_INDEX,
    SLICE_ORDER,
    STUDY_PROBABILITIES,
    StudyScoringModule,
    study_outputs,
)
from ich_model.synth import IMAGES_DIR, LABELS_CSV, generate_dataset
from pipeline.configs import PipelineConfig, beam_args_with_workers_image, preset
from pipeline.evaluation import study_eval_config
from pipeline.summary import blessing_reason
from tests.pipeline_helpers import (
    BEAM_ARGS,
    export_ensemble,
    randomised,
    read_split,
    run_example_gen,
    run_pusher,
    run_transform,
)

SPLITS = ("train", "eval")


def edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Synthetic studies with three quirks written into their headers, ingested, and the component's output."""
    root = tmp_path_factory.mktemp("sequences")
    generate_dataset(root / "rsna", patients=6, slices_per_study=5, seed=21, size=64, positive_fraction=0.5,
                     progress=False)
    files = sorted((root / "rsna" / IMAGES_DIR).glob("*.dcm"))
    by_study = defaultdict(list)
    for path in files:
        by_study[pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID].append(path)
    first, second, third = (by_study[uid] for uid in sorted(by_study)[:3])
    edit(first[0], lambda ds: delattr(ds, "ImagePositionPatient"))  # no position
    twin = pydicom.dcmread(second[1], stop_before_pixels=True).ImagePositionPatient

    def same_position(ds):
        ds.ImagePositionPatient = twin

    edit(second[2], same_position)  # two slices at one position
    for path in third[:2]:  # a study of two series
        edit(path, lambda ds: setattr(ds, "SeriesInstanceUID", ds.SeriesInstanceUID + ".2"))

    examples = run_example_gen(DicomExampleGen(str(root / "rsna"), train_share=0.5), root / "examples")
    run_transform(root / "examples", root / "transform", root / "tft-tmp")
    ensemble_dir = export_ensemble(root / "transform", [build_cascade("tiny", seed=s) for s in (1, 2, 3)], root)
    model = standard_artifacts.Model()
    model.uri = str(Path(ensemble_dir).parent)
    sequences = standard_artifacts.Examples()
    sequences.uri = str(root / "sequences")
    Executor(Executor.Context(beam_pipeline_args=beam_args_with_workers_image(BEAM_ARGS))).Do(
        {EXAMPLES_KEY: [examples], MODEL_KEY: [model]}, {STUDY_SEQUENCES_KEY: [sequences]}, {})
    return root, ensemble_dir, sequences


def records(sequences, split: str) -> list[tf.train.Example]:
    return read_split(Path(sequences.uri), split)


def values(record: tf.train.Example, name: str) -> list:
    feature = record.features.feature[name]
    return list(getattr(feature, feature.WhichOneof("kind")).value)


def numpy_order(root: Path) -> dict[tuple[str, str], list[tuple[float, str]]]:
    """Per (study, series): (position along the normal, image ID) in order, from pydicom's headers; slices without
    a position last, ties by image ID."""
    series = defaultdict(list)
    for path in (root / "rsna" / IMAGES_DIR).glob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        orientation = np.array(ds.ImageOrientationPatient, float)
        position = (float(np.dot(np.array(ds.ImagePositionPatient, float),
                                 np.cross(orientation[:3], orientation[3:])))
                    if "ImagePositionPatient" in ds else np.nan)
        series[(ds.StudyInstanceUID, ds.SeriesInstanceUID)].append((position, str(ds.SOPInstanceUID)))
    return {key: sorted(slices, key=lambda s: (np.isnan(s[0]), np.nan_to_num(s[0]), s[1]))
            for key, slices in series.items()}


def test_each_series_is_one_record_in_numpy_s_order_along_the_normal(built):
    root, _, sequences = built
    expected = numpy_order(root)
    seen = {}
    for split in SPLITS:
        for record in records(sequences, split):
            key = (values(record, "study_uid")[0].decode(), values(record, "series_uid")[0].decode())
            seen[key] = record
    assert set(seen) == set(expected)
    assert len({study for study, _ in seen}) == len(seen) - 1  # one study holds two series
    for key, record in seen.items():
        positions, image_ids = zip(*expected[key], strict=True)
        assert [i.decode() for i in values(record, context.IMAGE_IDS)] == list(image_ids)
        assert values(record, context.LENGTH) == [len(image_ids)]
        np.testing.assert_allclose(values(record, context.POSITIONS), positions, atol=1e-3)
        known = ~np.isnan(positions)
        assert values(record, context.POSITION_KNOWN) == known.astype(int).tolist()
        steps = np.nan_to_num(np.diff(positions))
        np.testing.assert_allclose(values(record, context.GAP_BEFORE), np.r_[0, steps], atol=1e-3)
        np.testing.assert_allclose(values(record, context.GAP_AFTER), np.r_[steps, 0], atol=1e-3)
        assert values(record, context.MISSING_POSITIONS) == [int((~known).sum())]
        assert values(record, context.DUPLICATE_POSITIONS) == [int(np.sum(np.diff(np.array(positions)[known]) < 0.01))]


def test_the_quirks_are_counted_in_the_report_and_on_the_artifact(built):
    _, _, sequences = built
    report = json.loads((Path(sequences.uri) / REPORT_FILE).read_text())
    assert sorted(report) == sorted(SPLITS)
    assert sum(r["missing_positions"] for r in report.values()) == 1
    assert sum(r["duplicate_positions"] for r in report.values()) == 1
    for split in SPLITS:
        written = records(sequences, split)
        assert report[split]["series"] == len(written)
        assert report[split]["slices"] == sum(values(r, context.LENGTH)[0] for r in written)
        assert report[split]["longest_series"] == max(values(r, context.LENGTH)[0] for r in written)
        assert sequences.get_int_custom_property(f"{split}_series") == len(written)
    assert artifact_utils.decode_split_names(sequences.split_names) == list(SPLITS)


def test_each_slice_carries_the_ensemble_s_outputs_and_the_csv_labels(built):
    root, ensemble_dir, sequences = built
    labels = read_rsna_labels(root / "rsna" / LABELS_CSV).labels
    serve = tf.saved_model.load(ensemble_dir).signatures[SERVING_SIGNATURE]
    for split in SPLITS:
        slices = read_split(root / "examples", split)
        outputs = serve(examples=tf.constant([e.SerializeToString() for e in slices]))
        by_id = {e.features.feature["image_id"].bytes_list.value[0].decode(): i for i, e in enumerate(slices)}
        patients = {e.features.feature["patient_id"].bytes_list.value[0] for e in slices}
        for record in records(sequences, split):
            assert values(record, "patient_id")[0] in patients  # the patient split is kept
            rows = [by_id[i.decode()] for i in values(record, context.IMAGE_IDS)]
            size = values(record, context.EMBEDDING_SIZE)[0]
            np.testing.assert_allclose(np.reshape(values(record, context.EMBEDDING), (-1, size)),
                                       outputs[EMBEDDING].numpy()[rows].reshape(len(rows), -1), atol=1e-5)
            for name, output in ((context.PROBABILITIES, PROBABILITIES), (context.SPREAD, SPREAD)):
                np.testing.assert_allclose(np.reshape(values(record, name), (-1, NUM_LABELS)),
                                           outputs[output].numpy()[rows], atol=1e-6)
            expected = np.array([labels[i.decode()] for i in values(record, context.IMAGE_IDS)])
            assert np.reshape(values(record, context.SLICE_LABELS), (-1, NUM_LABELS)).tolist() == expected.tolist()
            assert values(record, context.STUDY_LABEL) == expected.max(axis=0).tolist()
            assert "pixels" not in record.features.feature



def test_the_study_signature_on_slices_in_any_order_equals_the_two_stages_run_by_hand(built, tmp_path):
    root, ensemble_dir, sequences = built
    written = [r for split in SPLITS for r in records(sequences, split)]
    model = randomised(build_context_model(values(written[0], context.EMBEDDING_SIZE)[0], units=8, seed=1), seed=2)
    StudyScoringModule(tf.saved_model.load(ensemble_dir), model, {"kind": "study"}).save(str(tmp_path / "study"))
    serve = tf.saved_model.load(str(tmp_path / "study")).signatures[SERVING_SIGNATURE]

    by_hand, studies = {}, defaultdict(list)
    for record in written:
        inputs, _ = parse_record(tf.constant(record.SerializeToString()))
        outputs = model({name: value[None] for name, value in inputs.items()}, training=False)
        study = values(record, "study_uid")[0].decode()
        studies[study].append(outputs[STUDY][0].numpy())
        for place, image_id in enumerate(values(record, context.IMAGE_IDS)):
            by_hand[image_id.decode()] = (outputs[REFINED][0, place].numpy(), place,
                                          values(record, "series_uid")[0].decode())
    slices = defaultdict(list)
    for split in SPLITS:
        for example in read_split(root / "examples", split):
            slices[example.features.feature["study_uid"].bytes_list.value[0].decode()].append(example)
    rng = np.random.default_rng(5)
    for study, examples in slices.items():
        shuffled = [examples[i] for i in rng.permutation(len(examples))]
        served = serve(examples=tf.constant([e.SerializeToString() for e in shuffled]))
        image_ids = [e.features.feature["image_id"].bytes_list.value[0].decode() for e in shuffled]
        np.testing.assert_allclose(served[REFINED_PROBABILITIES].numpy(), [by_hand[i][0] for i in image_ids],
                                   atol=1e-4)
        assert served[SLICE_ORDER].numpy().tolist() == [by_hand[i][1] for i in image_ids]
        series_uids = sorted({by_hand[i][2] for i in image_ids})
        assert served[SERIES_INDEX].numpy().tolist() == [series_uids.index(by_hand[i][2]) for i in image_ids]
        np.testing.assert_allclose(served[STUDY_PROBABILITIES].numpy(), np.max(studies[study], axis=0), atol=1e-4)
    assert any(len(heads) == 2 for heads in studies.values())  # the study of two series was served as one


@pytest.fixture(scope="module")
def study_model(built, tmp_path_factory):
    """The context model trained by the real TFX Trainer executor on the records, exported as a study model."""
    _, ensemble_dir, sequences = built
    out = tmp_path_factory.mktemp("context_trainer")
    base_model = standard_artifacts.Model()
    base_model.uri = str(Path(ensemble_dir).parent)
    model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
    model.uri, model_run.uri = str(out / "model"), str(out / "model_run")
    settings = {"train_steps": 30, "batch_size": 4, "units": 8, "seed": 3}
    GenericExecutor().Do(
        {standard_component_specs.EXAMPLES_KEY: [sequences], standard_component_specs.BASE_MODEL_KEY: [base_model]},
        {standard_component_specs.MODEL_KEY: [model], standard_component_specs.MODEL_RUN_KEY: [model_run]},
        {standard_component_specs.RUN_FN_KEY: "ich_model.context_trainer.run_fn",
         standard_component_specs.TRAIN_ARGS_KEY: proto_utils.proto_to_json(trainer_pb2.TrainArgs(num_steps=30)),
         standard_component_specs.EVAL_ARGS_KEY: proto_utils.proto_to_json(trainer_pb2.EvalArgs(num_steps=1)),
         standard_component_specs.CUSTOM_CONFIG_KEY: json.dumps(settings)})
    return model


def eval_studies(root: Path) -> dict[bytes, list[tf.train.Example]]:
    by_study = defaultdict(list)
    for example in read_split(root / "examples", "eval"):
        by_study[example.features.feature["study_uid"].bytes_list.value[0]].append(example)
    return by_study


def test_the_context_trainer_exports_a_study_model_whose_eval_figures_numpy_finds_in_its_outputs(built, study_model):
    root, ensemble_dir, _ = built
    model = study_model
    serving_dir = path_utils.serving_model_path(model.uri)
    description = read_description(serving_dir)
    assert description["kind"] == "study" and description["context"]["settings"]["units"] == 8
    assert description["slice_ensemble"] == read_description(ensemble_dir)
    # TFX's default train split (PipelineConfig.context_share 0): the series of the train split's records.
    train_series = len(read_split(Path(built[2].uri), "train"))
    assert description["context"]["trained_on"] == {"splits": ["train"], "series": train_series}
    serve = tf.saved_model.load(serving_dir).signatures[SERVING_SIGNATURE]
    labels, refined, slice_only = [], [], []
    for examples in eval_studies(root).values():
        served = serve(examples=tf.constant([e.SerializeToString() for e in examples]))
        labels += [list(e.features.feature["label"].int64_list.value) for e in examples]
        refined.append(served[REFINED_PROBABILITIES].numpy())
        slice_only.append(served["probabilities"].numpy())
    figures = description["context"]["eval"]
    assert figures["slices"] == len(labels)
    assert figures["slice_refined"] == pytest.approx(weighted_log_loss(labels, np.concatenate(refined)), abs=1e-4)
    assert figures["slice_only"] == pytest.approx(weighted_log_loss(labels, np.concatenate(slice_only)), abs=1e-4)

    # Its operating points, against sklearn's ROC of the exported model's own outputs on the eval studies: each
    # reaches its target at the lowest false-positive rate that any threshold reaching it has.
    points = description["operating_points"]
    assert points["target_sensitivity"] == {"slice": 0.9, "study": 0.95}
    per_study = [(serve(examples=tf.constant([e.SerializeToString() for e in examples])), examples)
                 for examples in eval_studies(root).values()]
    outputs = {"slice": (np.array(labels), np.concatenate(refined)),
               "study": (np.array([np.max([e.features.feature["label"].int64_list.value for e in examples], axis=0)
                                   for _, examples in per_study]),
                         np.stack([served[STUDY_PROBABILITIES].numpy() for served, _ in per_study]))}
    checked = []
    for level, (truth, scores) in outputs.items():
        for index, label in enumerate(LABELS):
            point = points[level][label]
            assert point["positives"] == truth[:, index].sum()
            if not truth[:, index].any():
                assert point["threshold"] is None
                continue
            flagged = scores[:, index] >= point["threshold"]
            sensitivity = flagged[truth[:, index] == 1].mean()
            assert sensitivity == pytest.approx(point["sensitivity"]) and sensitivity >= points[
                "target_sensitivity"][level]
            if not truth[:, index].all():
                fpr, tpr, _ = roc_curve(truth[:, index], scores[:, index])
                assert flagged[truth[:, index] == 0].mean() == pytest.approx(
                    fpr[tpr >= points["target_sensitivity"][level]].min())
            checked.append((level, label))
    assert {("slice", "any"), ("study", "any")} <= set(checked) and len(checked) >= 4  # this eval split's positives


def without_label(examples_dir: Path, label: str, out: Path) -> Path:
    """A copy of the Examples whose eval split holds no positive of `label`."""
    shutil.copytree(examples_dir, out)
    for path in (out / "Split-eval").glob("*.gz"):
        records = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(str(path), "GZIP")]
        with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
            for example in records:
                example.features.feature["label"].int64_list.value[LABELS.index(label)] = 0
                writer.write(example.SerializeToString())
    return out


def run_study_evaluator(root: Path, model, baseline, config: PipelineConfig, out: Path,
                        examples_dir: Path | None = None):
    examples = standard_artifacts.Examples()
    examples.uri = str(examples_dir or root / "examples")
    examples.split_names = artifact_utils.encode_split_names(list(SPLITS))
    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, blessing.uri = str(out / "evaluation"), str(out / "blessing")
    inputs = {evaluator.EXAMPLES_KEY: [examples], evaluator.MODEL_KEY: [model]}
    if baseline is not None:
        inputs[evaluator.BASELINE_MODEL_KEY] = [baseline]
    evaluator.Executor(evaluator.Executor.Context(beam_pipeline_args=beam_args_with_workers_image(BEAM_ARGS))).Do(
        inputs, {evaluator.EVALUATION_KEY: [evaluation], evaluator.BLESSING_KEY: [blessing]},
        {evaluator.EVAL_CONFIG_KEY: proto_utils.proto_to_json(study_eval_config(config)),
         evaluator.EXAMPLE_SPLIT_KEY: "eval"})
    return evaluation, blessing


def test_the_study_evaluator_s_aucs_are_sklearn_s_on_the_study_model_s_outputs_and_its_floors_bless(
        built, study_model, tmp_path):
    root, ensemble_dir, _ = built
    slice_ensemble = standard_artifacts.Model()  # an earlier release's published model serves as the baseline
    slice_ensemble.uri = str(Path(ensemble_dir).parent)
    lenient = dataclasses.replace(preset("demo"), auc_floors={name: 0.0 for name in LABELS},
                                  max_weighted_log_loss=100.0, study_auc_floor=0.0, auc_regression_tolerance=1.0,
                                  log_loss_regression_tolerance=100.0)
    evaluation, blessing = run_study_evaluator(root, study_model, slice_ensemble, lenient, tmp_path / "lenient")

    serve = tf.saved_model.load(path_utils.serving_model_path(study_model.uri)).signatures[SERVING_SIGNATURE]
    rows = {"slice": ([], [], []), "study": ([], [], [])}  # labels, refined, slice-only (the baseline's)
    for examples in eval_studies(root).values():
        served = serve(examples=tf.constant([e.SerializeToString() for e in examples]))
        labels = np.array([list(e.features.feature["label"].int64_list.value) for e in examples])
        for level, values in (("slice", (labels, served[REFINED_PROBABILITIES].numpy(),
                                         served["probabilities"].numpy())),
                              ("study", (labels.max(axis=0)[None], served[STUDY_PROBABILITIES].numpy()[None],
                                         served["probabilities"].numpy().max(axis=0)[None]))):
            for column, value in zip(rows[level], values, strict=True):
                column.append(value)
    compared = 0
    for model_name, column in (("candidate", 1), ("baseline", 2)):
        result = dict(tfma.load_eval_result(evaluation.uri, model_name=model_name).slicing_metrics)
        for level, output in (("slice", "refined"), ("study", "refined"), ("slice", "slice_only")):
            if model_name == "baseline" and output == "refined" and level == "study":
                continue  # the slice ensemble's `refined` study figure is its `slice_only` one
            labels, scores = np.concatenate(rows[level][0]), np.concatenate(rows[level][column if output ==
                                                                                            "refined" else 2])
            metrics = result[(("level", level),)][output]
            for index in range(NUM_LABELS):
                if 0 < labels[:, index].sum() < len(labels):
                    assert metrics[f"classId:{index}"]["auc"]["doubleValue"] == pytest.approx(
                        roc_auc_score(labels[:, index], scores[:, index]), abs=2e-3)
                    compared += 1
    assert compared >= 8
    # TFMA's sensitivity and specificity at the candidate's operating points: sklearn's on its outputs flagged with
    # the thresholds of its description; the baseline (a slice ensemble, without operating points) flags at 0.5.
    points = read_description(path_utils.serving_model_path(study_model.uri))["operating_points"]
    for model_name, column in (("candidate", 1), ("baseline", 2)):
        result = dict(tfma.load_eval_result(evaluation.uri, model_name=model_name).slicing_metrics)
        for level in ("slice", "study"):
            labels, scores = np.concatenate(rows[level][0]), np.concatenate(rows[level][column])
            metrics = result[(("level", level),)][evaluator.FLAGGED]
            for index, label in enumerate(LABELS):
                threshold = points[level][label]["threshold"] if model_name == "candidate" else 0.5
                flagged = scores[:, index] >= (0.5 if threshold is None else threshold)
                for name, positive in (("recall", 1), ("specificity", 0)):
                    if (labels[:, index] == positive).any():
                        assert metrics[f"classId:{index}"][name]["doubleValue"] == pytest.approx(recall_score(
                            labels[:, index] == positive, flagged == positive)), (model_name, level, label, name)
    assert (Path(blessing.uri) / "BLESSED").exists() and blessing.get_int_custom_property("blessed") == 1
    assert blessing.get_string_custom_property("current_model") == study_model.uri

    # A floor the study head cannot reach, and one on epidural, of which this eval split now holds no positive:
    # not blessed, TFMA names both failed gates, and the reason calls the second undefined.
    strict = dataclasses.replace(lenient, study_auc_floor=1.01, auc_floors={**lenient.auc_floors, "epidural": 0.5})
    evaluation, blessing = run_study_evaluator(root, study_model, None, strict, tmp_path / "strict",
                                               without_label(root / "examples", "epidural", tmp_path / "examples"))
    assert (Path(blessing.uri) / "NOT_BLESSED").exists() and blessing.get_int_custom_property("blessed") == 0
    failed = [f.metric_key for v in tfma.load_validation_result(evaluation.uri).metric_validations_per_slice
              for f in v.failures]
    assert sorted((key.name, key.output_name, key.sub_key.class_id.value) for key in failed) == [
        ("auc", "refined", LABELS.index("epidural")), ("auc", "refined", LABELS.index("any"))]
    blessed, reason = blessing_reason(evaluation.uri, had_baseline=False,
                                      slicing_metrics=tfma.load_eval_result(evaluation.uri).slicing_metrics)
    assert not blessed and "auc epidural is undefined (the eval split holds no positive or no negative of it) " \
                           "fails >= 0.5" in reason
    assert re.search(r"auc any = \d\.\d{4} fails >= 1\.01", reason), reason
    # Alone, the candidate's results carry no model name.
    alone = dict(tfma.load_eval_result(evaluation.uri).slicing_metrics)
    assert alone[(("level", "study"),)]["refined"]["classId:5"]["auc"]


def _refined_on_eval_slices(root: Path, model_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """The labels and a study model's refined probabilities of the eval split's slices, study by study."""
    serve = tf.saved_model.load(model_dir).signatures[SERVING_SIGNATURE]
    labels, refined = [], []
    for examples in eval_studies(root).values():
        labels.append([list(e.features.feature["label"].int64_list.value) for e in examples])
        refined.append(serve(examples=tf.constant([e.SerializeToString() for e in examples]))[
            REFINED_PROBABILITIES].numpy())
    return np.concatenate(labels), np.concatenate(refined)


def test_a_candidate_worse_than_the_baseline_beyond_the_demo_s_tolerances_is_not_blessed_and_not_pushed(
        built, study_model, tmp_path):
    """The no-regression gate with the tolerances the demo preset ships with (the floors are set apart: the test
    above gates on them): a study model whose context stage was never trained, against the trained one, loses more
    AUC or log loss than the tolerances allow by sklearn's figures, and the StudyEvaluator does not bless it, naming
    change thresholds only; the Pusher publishes nothing. The trained model against itself is blessed and pushed."""
    root, ensemble_dir, sequences = built
    shipped = preset("demo")
    regression_only = dataclasses.replace(shipped, auc_floors={name: 0.0 for name in LABELS},
                                          max_weighted_log_loss=100.0, study_auc_floor=0.0)
    written = records(sequences, "train")[0]
    worse = standard_artifacts.Model()
    worse.uri = str(tmp_path / "worse")
    slice_ensemble = read_description(ensemble_dir)
    StudyScoringModule(tf.saved_model.load(ensemble_dir), randomised(build_context_model(
        values(written, context.EMBEDDING_SIZE)[0], units=8, seed=1), seed=2), study_description(
        slice_ensemble, {"settings": {}}, study_outputs(slice_ensemble))).save(path_utils.serving_model_dir(worse.uri))

    labels, candidate = _refined_on_eval_slices(root, path_utils.serving_model_path(worse.uri))
    _, baseline = _refined_on_eval_slices(root, path_utils.serving_model_path(study_model.uri))
    defined = [i for i in range(NUM_LABELS) if 0 < labels[:, i].sum() < len(labels)]
    auc_loss = {LABELS[i]: roc_auc_score(labels[:, i], baseline[:, i]) - roc_auc_score(labels[:, i], candidate[:, i])
                for i in defined}
    log_loss_gain = weighted_log_loss(labels, candidate) - weighted_log_loss(labels, baseline)
    beyond = {label for label, loss in auc_loss.items() if loss > shipped.auc_regression_tolerance}
    assert beyond or log_loss_gain > shipped.log_loss_regression_tolerance, (auc_loss, log_loss_gain)

    evaluation, blessing = run_study_evaluator(root, worse, study_model, regression_only, tmp_path / "worse-eval")
    assert (Path(blessing.uri) / "NOT_BLESSED").exists() and blessing.get_int_custom_property("blessed") == 0
    failures = [f for v in tfma.load_validation_result(evaluation.uri).metric_validations_per_slice
                for f in v.failures]
    assert failures and all(f.metric_threshold.HasField("change_threshold") for f in failures)
    failed_aucs = {LABELS[f.metric_key.sub_key.class_id.value] for f in failures if f.metric_key.name == "auc"}
    # TFMA's AUC is a 10,000-bucket approximation: a label within 0.002 of the tolerance may fall either way.
    assert {label for label in beyond if auc_loss[label] > shipped.auc_regression_tolerance + 0.002} <= failed_aucs
    assert failed_aucs <= {label for label, loss in auc_loss.items()
                           if loss > shipped.auc_regression_tolerance - 0.002}
    serving = tmp_path / "serving"
    pushed = run_pusher(worse, blessing, serving, tmp_path / "worse-pushed")
    assert pushed.get_int_custom_property("pushed") == 0 and not serving.exists()

    evaluation, blessing = run_study_evaluator(root, study_model, study_model, regression_only, tmp_path / "same")
    assert (Path(blessing.uri) / "BLESSED").exists()
    pushed = run_pusher(study_model, blessing, serving, tmp_path / "same-pushed")
    assert pushed.get_int_custom_property("pushed") == 1 and len(list(serving.iterdir())) == 1
