"""The per-model figures that the console table, last_run.json, decisions.jsonl and the report page read, from
TFMA's own results of the pipeline's metric specs, against sklearn on the same labels and predictions."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from apache_beam.options.pipeline_options import PipelineOptions
from sklearn.metrics import log_loss, roc_auc_score

from ich_model.constants import ANY, LABELS
from ich_model.examples import LABEL
from pipeline.configs import preset
from pipeline.evaluation import MODEL_OUTPUTS, eval_config
from pipeline.figures import MACRO_AUC, UNDEFINED_AUC, evaluation_figures, model_name
from pipeline.summary import format_summary
from tests.pipeline_helpers import BEAM_ARGS

NO_POSITIVE = "epidural"
NO_NEGATIVE = "intraventricular"


def model_agnostic_config() -> tfma.EvalConfig:
    """The Evaluator's metric specs without its gates, on the overall slice, scoring predictions that the
    Examples carry (one feature per model output) instead of a model's."""
    config = eval_config(preset("demo"))
    del config.model_specs[:]
    config.model_specs.add(label_keys={output: LABEL for output in MODEL_OUTPUTS},
                           prediction_keys={output: output for output in MODEL_OUTPUTS})
    del config.slicing_specs[:]
    config.slicing_specs.add()
    metrics = [spec for spec in config.metrics_specs if not any(m.per_slice_thresholds for m in spec.metrics)]
    del config.metrics_specs[:]
    config.metrics_specs.extend(metrics)
    return config


def test_figures_of_a_tfma_evaluation_are_sklearn_s_over_the_defined_labels(tmp_path):
    rng = np.random.default_rng(7)
    n = 48
    labels = rng.integers(0, 2, (n, len(LABELS)))
    labels[:, LABELS.index(NO_POSITIVE)] = 0
    labels[:, LABELS.index(NO_NEGATIVE)] = 1
    predictions = {output: np.clip(0.35 * labels + rng.uniform(0.0, 0.65, labels.shape), 0.01, 0.99)
                   for output in MODEL_OUTPUTS}
    data = tmp_path / "examples.tfrecord"
    with tf.io.TFRecordWriter(str(data)) as writer:
        for i in range(n):
            feature = {LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=labels[i]))}
            feature.update({output: tf.train.Feature(float_list=tf.train.FloatList(value=p[i]))
                            for output, p in predictions.items()})
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    tfma.run_model_analysis(eval_config=model_agnostic_config(), data_location=str(data),
                            output_path=str(tmp_path / "evaluation"), pipeline_options=PipelineOptions(BEAM_ARGS))

    figures = evaluation_figures(tfma.load_eval_result(str(tmp_path / "evaluation")).slicing_metrics)

    assert set(figures) == {model_name(output) for output in MODEL_OUTPUTS}
    defined = [label for label in LABELS if label not in (NO_POSITIVE, NO_NEGATIVE)]
    weights = np.array([2.0 if label == ANY else 1.0 for label in LABELS])
    for output, p in predictions.items():
        model = figures[model_name(output)]
        expected = {label: roc_auc_score(labels[:, LABELS.index(label)], p[:, LABELS.index(label)])
                    for label in defined}
        for label in defined:
            # TFMA's AUC sums over 10,000 thresholds; 48 distinct scores leave it within rounding of sklearn's.
            assert model[label] == pytest.approx(expected[label], abs=1e-3), (output, label)
        assert model[NO_POSITIVE] is None and model[NO_NEGATIVE] is None
        assert model[UNDEFINED_AUC] == [NO_POSITIVE, NO_NEGATIVE]
        assert model[MACRO_AUC] == pytest.approx(np.mean(list(expected.values())), abs=1e-3)
        per_label = [log_loss(labels[:, i], p[:, i], labels=[0, 1]) for i in range(len(LABELS))]
        assert model["weighted_log_loss"] == pytest.approx(np.dot(weights, per_label) / weights.sum(), rel=1e-5)

    table = format_summary({"metrics": figures, "blessed": False, "reason": "a gate failed", "pushed_to": None})
    assert f"AUC of {NO_POSITIVE}, {NO_NEGATIVE} is undefined" in table
