"""The whole pipeline on a tiny synthetic set with LocalDagRunner and the real SQLite metadata store: every
component runs, TFMA holds every subtype and slice, the pushed SavedModel scores raw Examples, the summary
agrees with sklearn, and a second run is served from the cache."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from sklearn.metrics import roc_auc_score

from ich_model.constants import LABELS
from ich_model.metrics import weighted_log_loss
from ich_model.serving import PROBABILITIES, SERVING_SIGNATURE
from ich_model.synth import generate_dataset
from pipeline.configs import preset, with_overrides
from pipeline.evaluation import MODEL_OUTPUTS, SLICE_FEATURES
from pipeline.local_runner import LAST_RUN, run_local
from pipeline.summary import CANDIDATE
from tests.pipeline_helpers import BEAM_ARGS

pytestmark = pytest.mark.e2e

NODES = ["DicomExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform", "trainer_a", "trainer_b",
         "trainer_c", "Ensemble", "latest_blessed_model_resolver", "Evaluator", "Pusher"]
UPSTREAM_OF_THE_MODEL = NODES[:9]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    generate_dataset(root / "data", patients=14, slices_per_study=4, seed=5, size=96, positive_fraction=1.0,
                     subtype_mix="balanced", progress=False)
    config = with_overrides(preset("demo"), {
        "input_base": str(root / "data"), "pipeline_root": str(root / "root"),
        "beam_pipeline_args": json.dumps(BEAM_ARGS), "train_steps": "4", "eval_steps": "1", "batch_size": "8",
        # A 25% sample of a split this small can hold no Example at all (then the schema has no features).
        "statistics_sample_rate": "1.0",
        # Gates that a 4-step model passes: this test checks the plumbing; the demo run checks the figures.
        "auc_floors": json.dumps({name: 0.0 for name in LABELS}), "max_weighted_log_loss": "10",
        "auc_regression_tolerance": "1", "log_loss_regression_tolerance": "10"})
    first = run_local(config, echo=lambda *args, **kwargs: None)
    first_json = json.loads((root / "root" / LAST_RUN).read_text())
    second = run_local(config, echo=lambda *args, **kwargs: None)
    return config, first, first_json, second


def _executions(config) -> dict[str, list]:
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = config.metadata_path
    store = metadata_store.MetadataStore(connection)
    executions = {}
    for node in NODES:
        context = store.get_context_by_type_and_name("node", f"{config.pipeline_name}.{node}")
        assert context is not None, f"{node} never ran"
        executions[node] = sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)
    return executions


def test_every_component_ran_and_the_second_run_came_from_the_cache(runs):
    config, *_ = runs
    executions = _executions(config)
    for node in NODES:
        assert executions[node][0].last_known_state == metadata_store_pb2.Execution.COMPLETE, node
    for node in UPSTREAM_OF_THE_MODEL:  # nothing changed upstream of the model: reused, not recomputed
        assert executions[node][-1].last_known_state == metadata_store_pb2.Execution.CACHED, node


def test_the_pushed_ensemble_scores_raw_examples(runs, tmp_path):
    config, first, first_json, _ = runs
    assert first["blessed"] and first_json["pushed_to"] == first["pushed_to"]
    pushed = Path(first["pushed_to"])
    assert pushed.parent == Path(config.serving_path)
    eval_files = glob.glob(str(Path(config.pipeline_root) / "DicomExampleGen" / "examples" / "*" / "Split-eval"
                               / "*.gz"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(eval_files, compression_type="GZIP")]
    labels = np.array([tf.train.Example.FromString(r).features.feature["label"].int64_list.value
                       for r in records])
    probabilities = tf.saved_model.load(str(pushed)).signatures[SERVING_SIGNATURE](
        examples=tf.constant(records))[PROBABILITIES].numpy()
    assert probabilities.shape == (len(records), len(LABELS))
    assert np.all((probabilities > 0) & (probabilities < 1))

    # The summary's figures are TFMA's, and TFMA's are sklearn's on the same Examples.
    ensemble = first["metrics"]["ensemble"]
    assert ensemble["weighted_log_loss"] == pytest.approx(weighted_log_loss(labels, probabilities), rel=1e-4)
    for index, name in enumerate(LABELS):
        if 0 < labels[:, index].sum() < len(labels):
            assert ensemble[name] == pytest.approx(roc_auc_score(labels[:, index], probabilities[:, index]),
                                                   abs=0.02)  # TFMA's AUC is a 10,000-bucket approximation


def test_tfma_holds_every_subtype_of_every_model_on_every_slice(runs):
    config, first, first_json, second = runs
    result = tfma.load_eval_result(first["evaluation"])
    sliced = {slice_key: metrics for slice_key, metrics in result.slicing_metrics}
    assert () in sliced
    for feature in SLICE_FEATURES:
        assert any(key and key[0][0] == feature for key in sliced), feature
    for output in MODEL_OUTPUTS:
        sub_keys = set(sliced[()][output])
        assert {f"classId:{i}" for i in range(len(LABELS))} <= sub_keys, output
    assert set(first_json["metrics"]) == {"ensemble", "member_a", "member_b", "member_c"}
    # The second run compared its candidate with the first run's blessed ensemble.
    second_result = tfma.load_eval_result(second["evaluation"], model_name=CANDIDATE)
    assert second_result.slicing_metrics
