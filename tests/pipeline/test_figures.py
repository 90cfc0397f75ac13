"""The per-model figures that the console table, last_run.json, decisions.jsonl and the report page read, from
TFMA's own results of the pipeline's metric specs, against sklearn on the same labels and predictions; the
flagged share per slice against numpy, and the report's out-of-distribution table and histogram."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from apache_beam.options.pipeline_options import PipelineOptions
from sklearn.metrics import log_loss, roc_auc_score
from tensorflow_model_analysis.metrics import metric_specs

from components.study_evaluator.executor import REFINED
from ich_model.constants import ANY, LABELS
from ich_model.examples import IMAGE_SIZE, INTERCEPT_GROUP, LABEL, SPAN
from ich_model.metrics import FLAGGED_SHARE
from ich_model.preprocessing import POSITION_BAND
from ich_model.serving import OUT_OF_DISTRIBUTION
from pipeline.configs import preset
from pipeline.evaluation import MODEL_OUTPUTS, eval_config, study_eval_config
from pipeline.figures import MACRO_AUC, UNDEFINED_AUC, evaluation_figures, model_name
from pipeline.report.data import RunRecord, flagged_shares
from pipeline.report.page import render_page
from pipeline.report.pictures import ood_histogram, plot_ood_scores
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


def test_the_ensemble_s_config_gates_nothing_and_the_study_config_gates_the_refined_output_only():
    """As the Evaluator prepares it: TFMA accepts the label-less output, the ensemble gets a FlaggedShare of
    OUT_OF_DISTRIBUTION, and nothing is gated, so TFX writes no blessing for the ensemble. The study config,
    with and without a baseline, gates the refined output alone, change thresholds only beside a baseline."""
    config = tfma.utils.update_eval_config_with_defaults(eval_config(preset("demo")), has_baseline=False,
                                                         rubber_stamp=True)
    tfma.utils.verify_eval_config(config)
    keys = {key for computation in metric_specs.to_computations(config.metrics_specs, eval_config=config)
            for key in computation.keys}
    assert tfma.metrics.MetricKey(FLAGGED_SHARE, output_name=OUT_OF_DISTRIBUTION) in keys
    assert not tfma.metrics.metric_thresholds_from_metrics_specs(config.metrics_specs, eval_config=config)
    for has_baseline in (False, True):
        config = tfma.utils.update_eval_config_with_defaults(study_eval_config(preset("demo")),
                                                             has_baseline=has_baseline, rubber_stamp=True)
        tfma.utils.verify_eval_config(config)
        assert len(config.model_specs) == (2 if has_baseline else 1)
        gated = tfma.metrics.metric_thresholds_from_metrics_specs(config.metrics_specs, eval_config=config)
        assert {key.output_name for key in gated} == {REFINED}
        assert {key.name for key in gated} == {"auc", "weighted_log_loss"}
        assert any(key.is_diff for key in gated) == has_baseline


def _record(slicing_metrics: list, ood: dict | None) -> RunRecord:
    """A run that holds only the given evaluation metrics and OOD record."""
    summary = {"metrics": {}, "blessed": False, "reason": "not evaluated", "pushed_to": None, "baseline": None,
               "evaluation": "evaluation"}
    return RunRecord(pipeline_name="ich", run_id="run", summary=summary, metrics=slicing_metrics, plots=[],
                     baseline_metrics=None, study_metrics=[], trainers={}, ingestion={}, threshold=None, ood=ood)


def _page(record: RunRecord, pictures: dict) -> dict:
    from tests.pipeline.test_pipeline_e2e import PageReader

    names = {name: f"{name}.png" for name in ("roc", "pr", "calibration", "models", "training")}
    reader = PageReader()
    reader.feed(render_page(record, {**names, **pictures}, "root"))
    return reader.sections


def test_flagged_share_per_slice_of_a_tfma_evaluation_is_numpy_s_and_the_report_tables_it(tmp_path):
    """The Evaluator's FlaggedShare spec, label keys and slicing specs, on Examples that carry the ensemble's
    flags (the model-agnostic path); span 2 comes from an unseen scanner and is mostly flagged."""
    rng = np.random.default_rng(11)
    n = 60
    features = {INTERCEPT_GROUP: rng.choice(["-1024", "-1000", "0"], n),
                IMAGE_SIZE: rng.choice(["512x512", "638x638"], n),
                POSITION_BAND: rng.choice(["low", "mid", "high"], n), SPAN: rng.integers(1, 3, n)}
    flags = (rng.random(n) < np.where(features[SPAN] == 2, 0.7, 0.05)).astype(np.float32)
    data = tmp_path / "examples.tfrecord"
    with tf.io.TFRecordWriter(str(data)) as writer:
        for i in range(n):
            feature = {LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[0] * len(LABELS))),
                       OUT_OF_DISTRIBUTION: tf.train.Feature(float_list=tf.train.FloatList(value=[flags[i]])),
                       SPAN: tf.train.Feature(int64_list=tf.train.Int64List(value=[features[SPAN][i]]))}
            feature.update({name: tf.train.Feature(bytes_list=tf.train.BytesList(value=[values[i].encode()]))
                            for name, values in features.items() if name != SPAN})
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    config = eval_config(preset("demo"))
    label_keys = dict(config.model_specs[0].label_keys)
    assert OUT_OF_DISTRIBUTION not in label_keys  # the pipeline's own: no label for the flag
    del config.model_specs[:]
    config.model_specs.add(label_keys=label_keys, prediction_keys={OUT_OF_DISTRIBUTION: OUT_OF_DISTRIBUTION})
    specs = [spec for spec in config.metrics_specs if list(spec.output_names) == [OUT_OF_DISTRIBUTION]]
    del config.metrics_specs[:]
    config.metrics_specs.extend(specs)
    tfma.run_model_analysis(eval_config=config, data_location=str(data), output_path=str(tmp_path / "evaluation"),
                            pipeline_options=PipelineOptions(BEAM_ARGS))
    slicing_metrics = tfma.load_eval_result(str(tmp_path / "evaluation")).slicing_metrics

    expected = {(): flags.mean()}
    for name, values in features.items():
        for value in np.unique(values):
            expected[((name, value.item() if name == SPAN else str(value)),)] = flags[values == value].mean()
    shares = dict(flagged_shares(slicing_metrics))
    assert shares == pytest.approx(expected, abs=1e-6)
    assert shares[((SPAN, 2),)] > 0.5 > shares[((SPAN, 1),)]

    rows = [row for row in _page(_record(slicing_metrics, None), {"ood": None})["ood"]["rows"]]
    assert rows[0] == ["slice", "flagged"]
    tabled = {row[0]: float(row[1].rstrip("%")) / 100 for row in rows[1:]}
    assert tabled == pytest.approx({" & ".join(f"{f} = {v}" for f, v in key) or "overall": share
                                    for key, share in expected.items()}, abs=5e-4)  # printed to 0.1%


def test_the_ood_histogram_draws_the_description_s_record_and_the_page_shows_it_only_when_present(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(3)
    scores = rng.gamma(4.0, 2.0, 400)
    counts, edges = np.histogram(scores, bins=24)
    threshold = float(np.quantile(scores, 0.95))
    ood = {"threshold": threshold, "flagged_share_eval": float(np.mean(scores > threshold)),
           "eval_histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}

    figure = ood_histogram(ood)
    ax = figure.axes[0]
    assert [bar.get_height() for bar in ax.patches] == counts.tolist()
    assert [bar.get_x() for bar in ax.patches] == pytest.approx(edges[:-1])
    assert [bar.get_width() for bar in ax.patches] == pytest.approx(np.diff(edges))
    assert [list(line.get_xdata()) for line in ax.lines] == [[threshold, threshold]]
    assert any(f"{ood['flagged_share_eval']:.1%}" in text.get_text() for text in ax.texts)

    record = _record([], ood)
    name = plot_ood_scores(record, tmp_path)
    with Image.open(tmp_path / name) as picture:
        assert picture.format == "PNG" and picture.width >= 800
        assert len(set(picture.convert("L").getdata())) > 10
    section = _page(record, {"ood": name})["ood"]
    assert section["images"] == [name] and f"{ood['flagged_share_eval']:.1%}" in section["text"]

    assert plot_ood_scores(_record([], None), tmp_path) is None
    without = _page(_record([], None), {"ood": None})
    assert without["ood"]["images"] == []
    assert "This model has no out-of-distribution score" in without["ood"]["text"]
    assert without["ood"]["rows"] == []
