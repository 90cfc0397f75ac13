"""The training part of the DAG: three independent member Trainers feeding one Ensemble."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format
from tfx import v1 as tfx
from tfx.proto import trainer_pb2

from components.dicom_example_gen import DicomExampleGen
from ich_model.settings import TrainerSettings
from ich_model.synth import generate_dataset
from pipeline.training import RUN_FN, ensemble_of, member_trainers


def test_three_independent_trainers_feed_the_ensemble(tmp_path):
    generate_dataset(tmp_path, patients=1, slices_per_study=1, seed=0, size=64, progress=False)
    example_gen = DicomExampleGen(str(tmp_path))
    statistics = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema = tfx.components.SchemaGen(statistics=statistics.outputs["statistics"], infer_feature_shape=True)
    transform = tfx.components.Transform(examples=example_gen.outputs["examples"], schema=schema.outputs["schema"],
                                         preprocessing_fn="ich_model.preprocessing.preprocessing_fn",
                                         materialize=False)
    trainers = member_trainers(example_gen.outputs["examples"], transform.outputs["transform_graph"],
                               TrainerSettings(preset="tiny", train_steps=100, eval_steps=10, seed=7))
    ensemble = ensemble_of(trainers, transform.outputs["transform_graph"], example_gen.outputs["examples"])
    # Building the pipeline resolves every component's upstream nodes from its input channels.
    tfx.dsl.Pipeline(pipeline_name="training-part", pipeline_root=str(tmp_path / "root"),
                     components=[example_gen, statistics, schema, transform, *trainers, ensemble])

    assert [t.id for t in trainers] == ["trainer_a", "trainer_b", "trainer_c"]
    for trainer, member in zip(trainers, "abc", strict=True):
        assert trainer.exec_properties["run_fn"] == RUN_FN
        # What run_fn reads back is the settings given, for this member.
        sent = TrainerSettings.from_custom_config(json.loads(trainer.exec_properties["custom_config"]))
        assert sent == TrainerSettings(member=member, preset="tiny", train_steps=100, eval_steps=10, seed=7)
        # The pipeline holds the TrainArgs proto as its JSON form.
        train_args = json_format.Parse(trainer.exec_properties["train_args"], trainer_pb2.TrainArgs())
        assert train_args.num_steps == 100
        # Independent: each depends on ExampleGen and Transform only, never on another trainer.
        assert {node.id for node in trainer.upstream_nodes} == {example_gen.id, transform.id}
    # The Ensemble also reads the raw Examples: its OOD model is fitted on the members' embeddings of them.
    assert {node.id for node in ensemble.upstream_nodes} == {"trainer_a", "trainer_b", "trainer_c", transform.id,
                                                            example_gen.id}


def test_trainer_settings_refuse_unknown_keys_and_values():
    with pytest.raises(ValueError, match="unknown Trainer settings \\['stpes'\\]"):
        TrainerSettings.from_custom_config({"stpes": 3})
    with pytest.raises(ValueError, match="unknown member 'd'"):
        TrainerSettings(member="d")
    with pytest.raises(ValueError, match="sized to the tiny preset"):
        TrainerSettings(architecture="convnext_only", preset="b0")
    assert TrainerSettings.from_custom_config(None) == TrainerSettings()
