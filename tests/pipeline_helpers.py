"""Running real components outside a pipeline, for the tests (no mocks: the executors themselves)."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import tensorflow as tf
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.utils import path_utils, proto_utils

from components.dicom_example_gen.component import DicomExampleGen
from components.dicom_example_gen.executor import Executor
from components.ensemble import Ensemble
from ich_model.constants import LABELS, NUM_LABELS
from ich_model.description import member_description
from ich_model.members import MEMBERS
from ich_model.model.network import NetworkSpec
from ich_model.model.presets import PRESETS
from ich_model.serving import ScoringModule
from pipeline.configs import beam_args_with_workers_image

BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


def run_example_gen(component: DicomExampleGen, out: Path, span: int | None = None) -> standard_artifacts.Examples:
    """DicomExampleGen's executor on the component's own execution properties (and a span number, as TFX's
    driver sets it for a span pattern)."""
    exec_properties = dict(component.exec_properties)
    if span is not None:
        exec_properties["span"] = span
    for key, value in exec_properties.items():
        if hasattr(value, "DESCRIPTOR"):
            exec_properties[key] = proto_utils.proto_to_json(value)
    examples = standard_artifacts.Examples()
    examples.uri = str(out)
    Executor(Executor.Context(beam_pipeline_args=beam_args_with_workers_image(BEAM_ARGS))).Do(
        {}, {standard_component_specs.EXAMPLES_KEY: [examples]}, exec_properties)
    return examples


def run_pusher(model, blessing, serving: Path, pushed_uri: Path) -> standard_artifacts.PushedModel:
    """The pipeline's Pusher executor (components/atomic_pusher) with the serving folder as its destination."""
    from tfx.proto import pusher_pb2

    from components.atomic_pusher.executor import Executor as PusherExecutor

    pushed = standard_artifacts.PushedModel()
    pushed.uri = str(pushed_uri)
    PusherExecutor().Do(
        {standard_component_specs.MODEL_KEY: [model], standard_component_specs.MODEL_BLESSING_KEY: [blessing]},
        {standard_component_specs.PUSHED_MODEL_KEY: [pushed]},
        {standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(pusher_pb2.PushDestination(
            filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=str(serving))))})
    return pushed


def split_files(out: Path, split: str) -> list[str]:
    return sorted(glob.glob(str(out / f"Split-{split}" / "*.gz")))


def read_split(out: Path, split: str) -> list[tf.train.Example]:
    records = tf.data.TFRecordDataset(split_files(out, split), compression_type="GZIP")
    return [tf.train.Example.FromString(r.numpy()) for r in records]


def run_transform(examples_dir: Path, transform_dir: Path, temp_dir: Path) -> None:
    """tf.Transform's AnalyzeAndTransformDataset with the project's preprocessing_fn on ingested Examples;
    writes the transform graph to `transform_dir`."""
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils
    from tfx_bsl.public import tfxio

    from ich_model.examples import RAW_FEATURE_SPEC
    from ich_model.preprocessing import preprocessing_fn

    schema = schema_utils.schema_from_feature_spec(RAW_FEATURE_SPEC)
    source = tfxio.TFExampleRecord(file_pattern=split_files(examples_dir, "train") + split_files(examples_dir, "eval"),
                                   schema=schema)
    with beam.Pipeline(argv=BEAM_ARGS) as pipeline, tft_beam.Context(temp_dir=str(temp_dir)):
        raw = pipeline | "Read" >> source.BeamSource()
        _, transform_fn = ((raw, source.TensorAdapterConfig())
                           | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
                               preprocessing_fn, output_record_batches=True))
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(str(transform_dir))
    # As the Transform component does: the raw schema beside the graph (TFTransformOutput.raw_metadata).
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema), str(transform_dir / "metadata"))


def untrained_member_description(name: str, model: tf.keras.Model, spec: NetworkSpec | None = None) -> dict:
    """The description of a member that was built, never trained: at the 0.5 prevalence a network starts from."""
    half = np.full(NUM_LABELS, 0.5)
    return member_description(name, spec or PRESETS["tiny"], model, MEMBERS[name], trained_on=half, moved_to=half,
                              steps_run=0)


def export_member(transform_dir: Path, name: str, member: tf.keras.Model, export_dir: Path | str,
                  spec: NetworkSpec | None = None) -> str:
    """One untrained Keras member exported as the Trainer exports it, with its description."""
    ScoringModule([member], [name], str(transform_dir), untrained_member_description(name, member, spec)).save(
        str(export_dir))
    return str(export_dir)


def export_ensemble(transform_dir: Path, members: list, out: Path, spec: NetworkSpec | None = None,
                    examples_dir: Path | None = None) -> str:
    """Keras members a, b, c (built from `spec`, by default the tiny cascade) exported each on its own, then
    merged by the Ensemble component from their Model artifacts, its OOD model fitted on the Examples in
    `examples_dir` (by default `examples` beside `transform_dir`); returns the ensemble's SavedModel folder."""
    artifacts = []
    for name, member in zip("abc", members, strict=True):
        artifact = standard_artifacts.Model()
        artifact.uri = str(out / f"member_{name}")
        export_member(transform_dir, name, member, path_utils.serving_model_path(artifact.uri), spec)
        artifacts.append(artifact)
    transform_graph = standard_artifacts.TransformGraph()
    transform_graph.uri = str(transform_dir)
    examples = standard_artifacts.Examples()
    examples.uri = str(examples_dir or transform_dir.parent / "examples")
    examples.split_names = artifact_utils.encode_split_names(["train", "eval"])
    ensemble = standard_artifacts.Model()
    ensemble.uri = str(out / "ensemble")
    Ensemble.test_call(*artifacts, transform_graph, examples, ensemble)
    return path_utils.serving_model_path(ensemble.uri)


def operating_points_at(slice_thresholds, study_thresholds) -> dict:
    """A study model description's operating points with the given thresholds ([6] each, in label order)."""
    from ich_model.operating_points import DEFAULT_THRESHOLD, SLICE_LEVEL, STUDY_LEVEL

    return {"chosen_on": "the tests' choice", "default_threshold": DEFAULT_THRESHOLD,
            "target_sensitivity": {SLICE_LEVEL: 0.9, STUDY_LEVEL: 0.95},
            **{level: {label: {"threshold": float(t)} for label, t in zip(LABELS, values, strict=True)}
               for level, values in ((SLICE_LEVEL, slice_thresholds), (STUDY_LEVEL, study_thresholds))}}


def randomised(model: tf.keras.Model, seed: int) -> tf.keras.Model:
    """Every weight of `model` drawn at random, so that every layer acts (the study-context model's corrections
    start at zero, which would hide its GRUs)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.3, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def export_study_model(ensemble_dir: str | Path, out: str | Path, units: int = 8, seed: int = 4,
                       operating_points: dict | None = None) -> tf.keras.Model:
    """A study model as the context Trainer exports it (its slice ensemble and a context model, and
    `operating_points` in its description when given), the context model untrained with every weight drawn at
    random so that it acts; returns the context model."""
    from ich_model.context_model import build_context_model
    from ich_model.description import read_description, study_description
    from ich_model.study_serving import StudyScoringModule, study_outputs

    ensemble = tf.saved_model.load(str(ensemble_dir))
    embedding = int(np.prod(ensemble.signatures["serving_default"].structured_outputs["embedding"].shape[1:]))
    context_model = randomised(build_context_model(embedding, units=units, seed=1), seed=seed)
    slice_ensemble = read_description(ensemble_dir)
    StudyScoringModule(ensemble, context_model, study_description(slice_ensemble, {"settings": {}}, study_outputs(
        slice_ensemble), operating_points)).save(str(out))
    return context_model
