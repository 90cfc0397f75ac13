"""Presets and command-line overrides, and the DAG that every preset builds."""

from __future__ import annotations

import tempfile

import pytest

from pipeline.configs import CONTAINER_IMAGE, PRESETS, beam_args_with_workers_image, preset, with_overrides
from pipeline.pipeline import create_pipeline

COMPONENTS = {"DicomExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "DataGate",
              "latest_span_profile_resolver", "latest_transform_cache_resolver", "Transform",
              "latest_blessed_model_resolver", "trainer_a", "trainer_b", "trainer_c", "Ensemble", "Evaluator",
              "StudySequenceGen", "context_trainer", "StudyEvaluator", "Pusher"}


def test_overrides_are_parsed_to_each_field_type():
    config = with_overrides(preset("demo"), {
        "train_steps": "40", "operating_threshold": "0.3", "enable_cache": "false",
        "beam_pipeline_args": '["--runner=DirectRunner"]', "auc_floors": '{"epidural": 0.55}',
        "synth.patients": "12", "context.train_steps": "50"})
    assert config.train_steps == 40 and config.operating_threshold == 0.3 and config.enable_cache is False
    assert config.beam_pipeline_args == ("--runner=DirectRunner",)
    assert config.auc_floors["epidural"] == 0.55 and config.auc_floors["subdural"] == PRESETS["demo"].auc_floors[
        "subdural"]
    assert config.synth.patients == 12 and config.synth.seed == PRESETS["demo"].synth.seed
    assert config.context.train_steps == 50 and config.context.units == PRESETS["demo"].context.units
    assert PRESETS["demo"].train_steps != 40  # the preset itself is untouched


@pytest.mark.parametrize(("overrides", "message"), [
    ({"train_stesp": "4"}, r"unknown setting; known settings are .*train_steps"),
    ({"train_steps": "many"}, r"train_steps=many: not a valid int"),
    ({"enable_cache": "maybe"}, r"not a valid bool"),
    ({"auc_floors": '{"haematoma": 0.5}'}, r"unknown labels \['haematoma'\]"),
    ({"synth.colour": "1"}, r"synth settings are patients, positive_fraction, seed, slices_per_study, subtype_mix"),
    ({"context.layers": "2"}, r"context settings are .*train_steps"),
])
def test_bad_overrides_name_the_problem(overrides, message):
    with pytest.raises(ValueError, match=message):
        with_overrides(preset("demo"), overrides)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="presets are demo, workstation, cluster"):
        preset("laptop")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_the_whole_dag(name, tmp_path):
    (tmp_path / "stage_2_train").mkdir()
    config = with_overrides(preset(name), {"input_base": str(tmp_path), "pipeline_root": str(tmp_path / "root")})
    pipeline = create_pipeline(config)
    by_id = {component.id: component for component in pipeline.components}
    # A window of several spans needs its resolver; a window of one span reads the ExampleGen's output.
    training_examples = "DicomExampleGen" if config.span_window == 1 else "span_window_resolver"
    expected = COMPONENTS | {training_examples}
    assert set(by_id) == expected and len(pipeline.components) == len(expected)
    assert {node.id for node in by_id["Transform"].upstream_nodes} == {
        training_examples, "ImportSchemaGen", "latest_transform_cache_resolver", "DataGate"}
    assert {node.id for node in by_id["DataGate"].upstream_nodes} == {
        "ExampleValidator", "ImportSchemaGen", "DicomExampleGen", "latest_span_profile_resolver"}
    for trainer in ("trainer_a", "trainer_b", "trainer_c"):
        assert {node.id for node in by_id[trainer].upstream_nodes} == {
            training_examples, "Transform", "latest_blessed_model_resolver"}
    assert {node.id for node in by_id["Evaluator"].upstream_nodes} == {"DicomExampleGen", "ImportSchemaGen", "Ensemble"}
    assert {node.id for node in by_id["StudySequenceGen"].upstream_nodes} == {"DicomExampleGen", "Ensemble"}
    assert {node.id for node in by_id["context_trainer"].upstream_nodes} == {"StudySequenceGen", "Ensemble"}
    assert {node.id for node in by_id["StudyEvaluator"].upstream_nodes} == {
        "DicomExampleGen", "context_trainer", "latest_blessed_model_resolver"}
    # The published model is the study model, blessed by the StudyEvaluator.
    assert {node.id for node in by_id["Pusher"].upstream_nodes} == {"context_trainer", "StudyEvaluator"}
    assert by_id["Transform"].exec_properties["preprocessing_fn"] == "ich_model.preprocessing.preprocessing_fn"
    assert "module_file" not in by_id["Transform"].exec_properties or not by_id["Transform"].exec_properties[
        "module_file"]


@pytest.mark.parametrize("context_share, ingested, context_learns_from", [
    (0.0, ["train", "eval"], "train"), (0.2, ["train", "context", "eval"], "context")])
def test_the_context_share_decides_which_split_the_context_stage_learns_from(
        context_share, ingested, context_learns_from, tmp_path):
    from google.protobuf import json_format
    from tfx.proto import example_gen_pb2, trainer_pb2

    (tmp_path / "stage_2_train").mkdir()
    config = with_overrides(preset("demo"), {"input_base": str(tmp_path), "pipeline_root": str(tmp_path / "root"),
                                             "context_share": str(context_share)})
    by_id = {component.id: component for component in create_pipeline(config).components}
    output = json_format.Parse(by_id["DicomExampleGen"].exec_properties["output_config"], example_gen_pb2.Output())
    assert [split.name for split in output.split_config.splits] == ingested
    train_args = json_format.Parse(by_id["context_trainer"].exec_properties["train_args"], trainer_pb2.TrainArgs())
    assert list(train_args.splits) == [context_learns_from]
    for member in ("trainer_a", "trainer_b", "trainer_c"):  # the members never see the context split
        member_args = json_format.Parse(by_id[member].exec_properties["train_args"], trainer_pb2.TrainArgs())
        assert list(member_args.splits) in ([], ["train"])


def test_cli_rejects_a_bad_setting_before_running_anything(capsys, tmp_path):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--data", str(tmp_path), "--set", "train_steps=lots"])
    assert exit_info.value.code == 2
    assert "train_steps=lots: not a valid int" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no demo set was generated, nothing ran


def test_local_beam_components_do_not_package_tfx_into_the_temp_folder(tmp_path, monkeypatch):
    """TFX copies its installation into a new temporary folder for each Beam executor whose arguments do not say
    where workers get their dependencies; a direct run never uses the copy, and nothing removes it."""
    from components.dicom_example_gen.executor import Executor

    local = preset("demo").beam_pipeline_args
    for temp, args in (("as_given", list(local)), ("with_image", beam_args_with_workers_image(local))):
        (tmp_path / temp).mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / temp))
        Executor(Executor.Context(beam_pipeline_args=args))
    assert list((tmp_path / "as_given").glob("*/build/tfx")), "TFX no longer packages itself: this shows nothing"
    assert not list((tmp_path / "with_image").iterdir())

    assert beam_args_with_workers_image(local) == [*local, f"--sdk_container_image={CONTAINER_IMAGE}"]
    assert beam_args_with_workers_image(["--setup_file=./setup.py"]) == ["--setup_file=./setup.py"]
    assert beam_args_with_workers_image(preset("cluster").beam_pipeline_args) == []
