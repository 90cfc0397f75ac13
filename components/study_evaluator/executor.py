"""StudyEvaluator's Beam executor:

    read the split --> (study UID, slice Example) --GroupByKey--> each model on the whole study
        --> one row per slice and one per study --> TFMA (model-agnostic) --> EvalResult, validation --> blessing

A study's slices (pixels included) are held together only while its models run, one study at a time per worker.
Each row also carries what each model flags at its own operating points (its description's; the default threshold
for a model without them), so that TFMA reports the sensitivity and specificity that `ich predict` and `ich serve`
act on.
"""

from __future__ import annotations

import logging
import os

import apache_beam as beam
import numpy as np
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tfx.components.evaluator import constants as evaluator_constants
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils, path_utils, proto_utils
from tfx_bsl.tfxio import tf_example_record

from ich_model.description import STUDY, read_description
from ich_model.examples import IMAGE_SIZE, INTERCEPT_GROUP, LABEL, RELATIVE_POSITION, SPAN, STUDY_UID
from ich_model.operating_points import SLICE_LEVEL, STUDY_LEVEL, flags, thresholds
from ich_model.preprocessing import POSITION_BAND, position_band
from ich_model.serving import PROBABILITIES, SERVING_SIGNATURE
from ich_model.study_serving import REFINED_PROBABILITIES, STUDY_PROBABILITIES

EXAMPLES_KEY = "examples"
MODEL_KEY = "model"
BASELINE_MODEL_KEY = "baseline_model"
EVAL_CONFIG_KEY = "eval_config"
EXAMPLE_SPLIT_KEY = "example_split"
EVALUATION_KEY = "evaluation"
BLESSING_KEY = "blessing"

# The rows TFMA reads. `level` tells a slice's row from a study's; each model's outputs are under its prefix.
LEVEL = "level"  # SLICE_LEVEL or STUDY_LEVEL
REFINED = "refined"  # the context model's per-slice output on a slice row, its study head on a study row
SLICE_ONLY = "slice_only"  # the slice ensemble's output; on a study row, its maximum over the study's slices
OUTPUTS = (REFINED, SLICE_ONLY)
FLAGGED = "flagged"  # 1.0 per label where `refined` reaches the model's operating point of the row's level
ROW_OUTPUTS = (*OUTPUTS, FLAGGED)
CANDIDATE_PREFIX, BASELINE_PREFIX = "", "baseline_"
PASSED_ON = (INTERCEPT_GROUP, IMAGE_SIZE, SPAN)  # slicing features copied from the slice Examples
METRICS_NAMESPACE = "StudyEvaluator"


def prediction_key(prefix: str, output: str) -> str:
    return f"{prefix}{output}"


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.asarray(values, np.float32).reshape(-1)))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=np.asarray(values, np.int64).reshape(-1)))


def _text(value: str) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))


def outputs_on_study(model, description: dict, records: list[bytes]) -> dict[str, np.ndarray]:
    """One model's outputs on one study's serialized slice Examples: REFINED [N, 6] and SLICE_ONLY [N, 6] per
    slice, FLAGGED [N, 6] at its slice operating points, and their study figures under `study_` ([6]; flagged at
    its study operating points). A slice ensemble (an earlier release's published model) has no context: its
    refined output is its slice output."""
    outputs = model.signatures[SERVING_SIGNATURE](examples=tf.constant(records))
    slice_only = outputs[PROBABILITIES].numpy()
    if description["kind"] == STUDY:
        refined, study = outputs[REFINED_PROBABILITIES].numpy(), outputs[STUDY_PROBABILITIES].numpy()
    else:
        refined, study = slice_only, slice_only.max(axis=0)
    return {REFINED: refined, SLICE_ONLY: slice_only,
            FLAGGED: flags(refined, thresholds(description, SLICE_LEVEL)).astype(np.float32),
            f"study_{REFINED}": study, f"study_{SLICE_ONLY}": slice_only.max(axis=0),
            f"study_{FLAGGED}": flags(study, thresholds(description, STUDY_LEVEL)).astype(np.float32)}


def study_rows(records: list[bytes], outputs_by_prefix: dict[str, dict[str, np.ndarray]]) -> list[tf.train.Example]:
    """The rows of one study: one per labelled slice, in the order given, then the study's (label: any slice
    positive per label)."""
    slices = [tf.train.Example.FromString(record).features.feature for record in records]
    labels = np.array([list(feature[LABEL].int64_list.value) for feature in slices], np.int64)
    rows = []
    relative = [feature[RELATIVE_POSITION].float_list.value[0] if RELATIVE_POSITION in feature else 0.5
                for feature in slices]
    bands = position_band(tf.constant(relative, tf.float32)).numpy()
    for index, feature in enumerate(slices):
        row = {LEVEL: _text(SLICE_LEVEL), LABEL: _ints(labels[index]), POSITION_BAND: _text(bands[index].decode())}
        row.update({name: feature[name] for name in PASSED_ON if name in feature})
        for prefix, outputs in outputs_by_prefix.items():
            row.update({prediction_key(prefix, name): _floats(outputs[name][index]) for name in ROW_OUTPUTS})
        rows.append(tf.train.Example(features=tf.train.Features(feature=row)))
    study = {LEVEL: _text(STUDY_LEVEL), LABEL: _ints(labels.max(axis=0))}
    if SPAN in slices[0]:
        study[SPAN] = slices[0][SPAN]
    for prefix, outputs in outputs_by_prefix.items():
        study.update({prediction_key(prefix, name): _floats(outputs[f"study_{name}"]) for name in ROW_OUTPUTS})
    rows.append(tf.train.Example(features=tf.train.Features(feature=study)))
    return rows


def _study_key(record: bytes) -> tuple[str, bytes]:
    feature = tf.train.Example.FromString(record).features.feature
    return feature[STUDY_UID].bytes_list.value[0].decode() if STUDY_UID in feature else "", record


class _ScoreStudies(beam.DoFn):
    """(study UID, its serialized slice Examples) -> the study's serialized rows, every model's outputs in each."""

    def __init__(self, serving_dirs: dict[str, str]):
        self._serving_dirs = serving_dirs
        self._studies = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "studies")
        self._unlabelled = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "unlabelled_slices")

    def setup(self):
        self._models = {prefix: (tf.saved_model.load(path), read_description(path))
                        for prefix, path in self._serving_dirs.items()}

    def process(self, element):
        _, records = element
        labelled = [r for r in records if LABEL in tf.train.Example.FromString(r).features.feature]
        self._unlabelled.inc(len(records) - len(labelled))
        if not labelled:
            return
        self._studies.inc()
        outputs = {prefix: outputs_on_study(model, description, labelled)
                   for prefix, (model, description) in self._models.items()}
        for row in study_rows(labelled, outputs):
            yield row.SerializeToString()


def materialized_models(eval_config: tfma.EvalConfig) -> list[tfma.types.EvalSharedModel]:
    """TFMA's stand-ins for models whose outputs are columns of the rows: without them TFMA takes a
    model-agnostic config for a single model and drops the baseline's ModelSpec and the change thresholds."""
    return [tfma.types.EvalSharedModel(model_name=spec.name, model_type=tfma.constants.MATERIALIZED_PREDICTION,
                                       is_baseline=spec.is_baseline, rubber_stamp=not spec.is_baseline and len(
                                           eval_config.model_specs) == 1, include_default_metrics=False)
            for spec in eval_config.model_specs]


def write_blessing(blessing, validation_ok: bool, model, baseline) -> None:
    """The blessing as TFX's Evaluator writes it (tfx/components/evaluator/executor.py)."""
    blessing.set_string_custom_property(evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
    blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
    if baseline is not None:
        blessing.set_string_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY,
                                            baseline.uri)
        blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, baseline.id)
    name = evaluator_constants.BLESSED_FILE_NAME if validation_ok else evaluator_constants.NOT_BLESSED_FILE_NAME
    io_utils.write_string_file(os.path.join(blessing.uri, name), "")
    blessing.set_int_custom_property(evaluator_constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                     evaluator_constants.BLESSED_VALUE if validation_ok
                                     else evaluator_constants.NOT_BLESSED_VALUE)


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802 (TFX's name)
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        baselines = input_dict.get(BASELINE_MODEL_KEY) or []
        baseline = baselines[0] if baselines else None
        eval_config = tfma.EvalConfig()
        proto_utils.json_to_proto(exec_properties[EVAL_CONFIG_KEY], eval_config)
        # Without a baseline TFMA drops its ModelSpec and the change thresholds (a first run is rubber-stamped).
        eval_config = tfma.utils.update_eval_config_with_defaults(
            eval_config, has_baseline=baseline is not None, rubber_stamp=True)
        tfma.utils.verify_eval_config(eval_config)
        serving_dirs = {CANDIDATE_PREFIX: path_utils.serving_model_path(model.uri)}
        if baseline is not None:
            serving_dirs[BASELINE_PREFIX] = path_utils.serving_model_path(baseline.uri)
        split = exec_properties[EXAMPLE_SPLIT_KEY]
        source = os.path.join(artifact_utils.get_split_uri([examples], split), "*")
        output_uri = artifact_utils.get_single_uri(output_dict[EVALUATION_KEY])
        rows_format = tf_example_record.TFExampleBeamRecord(
            physical_format="inmem", telemetry_descriptors=["StudyEvaluator"],
            raw_record_column_name=tfma.ARROW_INPUT_COLUMN)

        pipeline = self._make_beam_pipeline()
        _ = (pipeline
             | "Read" >> beam.io.ReadFromTFRecord(source, coder=beam.coders.BytesCoder())
             | "ByStudy" >> beam.Map(_study_key)
             | "Group" >> beam.GroupByKey()
             | "Score" >> beam.ParDo(_ScoreStudies(serving_dirs))
             | "Rows" >> rows_format.BeamSource()
             | "Evaluate" >> tfma.ExtractEvaluateAndWriteResults(
                 eval_shared_model=materialized_models(eval_config), eval_config=eval_config,
                 output_path=output_uri))
        result = pipeline.run()
        result.wait_until_finish()
        studies = _counter(result, "studies")
        logging.info("StudyEvaluator: %d studies of split %s scored (%d unlabelled slices left out); results in %s",
                     studies, split, _counter(result, "unlabelled_slices"), output_uri)
        if studies == 0:
            raise ValueError(f"split {split} of {examples.uri} holds no labelled slice Example to evaluate")
        validation = tfma.load_validation_result(output_uri)
        write_blessing(artifact_utils.get_single_instance(output_dict[BLESSING_KEY]), validation.validation_ok,
                       model, baseline)
        logging.info("StudyEvaluator: %s", "blessed" if validation.validation_ok else "not blessed")


def _counter(pipeline_result, name: str) -> int:
    query = pipeline_result.metrics().query(
        beam.metrics.metric.MetricsFilter().with_namespace(METRICS_NAMESPACE).with_name(name))
    values = [c.committed if c.committed is not None else c.attempted for c in query["counters"]]
    return int(sum(values))
