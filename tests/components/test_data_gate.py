"""The DataGate's drift check on spans ingested, described and validated by the real executors (DicomExampleGen,
TFX's StatisticsGen and ExampleValidator with the committed schema): a span of the same source drifts less than
the limits from the one before it; a span from another scanner and case mix drifts beyond them, is reported
with its measures against TFDV's own, and is refused when the limits block."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_data_validation as tfdv
from tfx import types
from tfx import v1 as tfx
from tfx.components.example_validator.executor import Executor as ValidatorExecutor
from tfx.components.statistics_gen.executor import Executor as StatisticsExecutor
from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
from tfx.types import standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from components.data_gate.executor import COUNTS_FILE, DRIFT_FILE, DataRefused, DriftLimits, gate, prevalence
from components.dicom_example_gen.component import DicomExampleGen
from components.dicom_example_gen.executor import REPORT_FILE
from ich_model.constants import LABELS
from ich_model.synth import generate_dataset
from pipeline.configs import PRESETS
from pipeline.data_checks import SCHEMA_FILE, statistics_options
from pipeline.summary import drift_line
from tests.pipeline_helpers import BEAM_ARGS, read_split, run_example_gen

DEMO = PRESETS["demo"]
DEMO_LIMITS = DriftLimits(DEMO.drift_categorical_limit, DEMO.drift_numeric_limit, DEMO.drift_prevalence_limit)


def _artifact(kind, uri: Path):
    artifact = kind()
    artifact.uri = str(uri)
    uri.mkdir(parents=True, exist_ok=True)
    return artifact


def _run(component, executor_class, inputs: dict, outputs: dict) -> None:
    """A TFX executor on its component's own execution properties."""
    properties = {key: proto_utils.proto_to_json(value) if hasattr(value, "DESCRIPTOR") else value
                  for key, value in component.exec_properties.items()}
    beam = issubclass(executor_class, BaseBeamExecutor)
    context = executor_class.Context(beam_pipeline_args=BEAM_ARGS) if beam else executor_class.Context()
    executor_class(context).Do(inputs, outputs, properties)


def described_span(root: Path, name: str, **synth) -> dict[str, Path]:
    """One span through DicomExampleGen, StatisticsGen and ExampleValidator (the committed schema): their URIs."""
    generate_dataset(root / f"{name}-dicom", slices_per_study=4, progress=False, **synth)
    examples = run_example_gen(DicomExampleGen(str(root / f"{name}-dicom"), max_reject_share=0.0),
                               root / f"{name}-examples")
    examples.split_names = '["train", "eval"]'
    schema = _artifact(standard_artifacts.Schema, root / f"{name}-schema")
    shutil.copy(SCHEMA_FILE, schema.uri)
    statistics = _artifact(standard_artifacts.ExampleStatistics, root / f"{name}-statistics")
    channel = {kind: types.Channel(type=kind) for kind in (standard_artifacts.Examples, standard_artifacts.Schema,
                                                               standard_artifacts.ExampleStatistics)}
    _run(tfx.components.StatisticsGen(examples=channel[standard_artifacts.Examples],
                                      schema=channel[standard_artifacts.Schema],
                                      stats_options=statistics_options(1.0)), StatisticsExecutor,
         {standard_component_specs.EXAMPLES_KEY: [examples], standard_component_specs.SCHEMA_KEY: [schema]},
         {standard_component_specs.STATISTICS_KEY: [statistics]})
    anomalies = _artifact(standard_artifacts.ExampleAnomalies, root / f"{name}-anomalies")
    _run(tfx.components.ExampleValidator(statistics=channel[standard_artifacts.ExampleStatistics],
                                         schema=channel[standard_artifacts.Schema]), ValidatorExecutor,
         {standard_component_specs.STATISTICS_KEY: [statistics], standard_component_specs.SCHEMA_KEY: [schema]},
         {standard_component_specs.ANOMALIES_KEY: [anomalies]})
    return {"examples": root / f"{name}-examples", "statistics": Path(statistics.uri),
            "anomalies": Path(anomalies.uri), "schema": Path(schema.uri) / "schema.pbtxt"}


def gate_span(span: dict[str, Path], profile: Path, baseline: Path | None, limits: DriftLimits) -> dict:
    profile.mkdir(parents=True, exist_ok=True)
    return gate(str(span["anomalies"]), str(span["statistics"]), str(span["schema"]), str(span["examples"]),
                str(baseline) if baseline else None, str(profile), limits)


@pytest.fixture(scope="module")
def spans(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    first = described_span(root, "first", patients=60, seed=41, size=96, positive_fraction=0.3)
    # Another draw from the same source: another seed, the same sizes and case mix.
    alike = described_span(root, "alike", patients=60, seed=42, size=96, positive_fraction=0.3)
    # Another scanner and case mix: larger images, every nuisance outside the training ranges, most studies bleed.
    other = described_span(root, "other", patients=40, seed=43, size=128, positive_fraction=0.9, shift=True)
    profile = root / "first-profile"
    first_drift = gate_span(first, profile, None, DEMO_LIMITS)
    return {"root": root, "first": first, "alike": alike, "other": other, "profile": profile,
            "first_drift": first_drift}


def test_a_first_span_has_nothing_to_compare_with_and_leaves_its_profile(spans):
    assert spans["first_drift"]["baseline_span"] is None and spans["first_drift"]["over"] == []
    profile = spans["profile"]
    assert (profile / "Split-train" / "FeatureStats.pb").is_file()
    counts = json.loads((profile / COUNTS_FILE).read_text())
    assert counts == json.loads((spans["first"]["examples"] / REPORT_FILE).read_text())["label_counts"]
    assert json.loads((profile / DRIFT_FILE).read_text())["span"] == 0


def test_a_span_from_the_same_source_stays_within_the_demo_limits(spans, tmp_path):
    drift = gate_span(spans["alike"], tmp_path / "profile", spans["profile"], DEMO_LIMITS)
    assert drift["baseline_span"] == 0
    assert drift["over"] == [], drift
    assert drift_line(drift).startswith(
        f"drift from span 0 (limits: L-infinity {DEMO_LIMITS.categorical:g}, Jensen-Shannon {DEMO_LIMITS.numeric:g}, "
        f"prevalence change {DEMO_LIMITS.prevalence:g}): none beyond; nearest: ")
    assert set(drift["features"]) == {"intercept_group", "image_size", "pixel_spacing_mm", "rescale_intercept",
                                      "slice_count"}


def test_a_span_from_another_scanner_and_case_mix_is_reported_with_tfdv_s_measures(spans, tmp_path):
    other, first = spans["other"], spans["first"]
    drift = gate_span(other, tmp_path / "profile", spans["profile"], DEMO_LIMITS)
    over = " ".join(drift["over"])
    # Sizes of 96 against 128 (each give or take a few pixels): nearly every share moved.
    assert drift["features"]["image_size"]["value"] > 0.9 and "image_size: L-infinity" in over
    assert "any prevalence" in over
    line = drift_line(drift)
    assert "(reported; drift_blocks_training is off)" in line and all(item in line for item in drift["over"])
    # The figures are TFDV's on the same statistics with the same comparator.
    current = tfdv.load_stats_binary(str(other["statistics"] / "Split-train" / "FeatureStats.pb"))
    previous = tfdv.load_stats_binary(str(first["statistics"] / "Split-train" / "FeatureStats.pb"))
    schema = tfdv.load_schema_text(str(first["schema"]))
    tfdv.get_feature(schema, "pixel_spacing_mm").drift_comparator.jensen_shannon_divergence.threshold = 0.0
    measured = tfdv.validate_statistics(current, schema, previous_statistics=previous).drift_skew_info[0]
    assert drift["features"]["pixel_spacing_mm"]["value"] == pytest.approx(measured.drift_measurements[0].value,
                                                                           abs=1e-4)
    # The prevalence against the Examples themselves.
    labels = {name: np.array([e.features.feature["label"].int64_list.value
                              for split in ("train", "eval") for e in read_split(spans_dir, split)])
              for name, spans_dir in (("first", first["examples"]), ("other", other["examples"]))}
    for index, label in enumerate(LABELS):
        entry = drift["prevalence"][label]
        assert entry["baseline"] == pytest.approx(labels["first"][:, index].mean(), abs=1e-4)
        assert entry["span"] == pytest.approx(labels["other"][:, index].mean(), abs=1e-4)
    assert (tmp_path / "profile" / DRIFT_FILE).is_file()  # reported, not refused: the limits do not block


def test_drift_beyond_limits_that_block_refuses_the_span_and_writes_no_profile(spans, tmp_path):
    blocking = DriftLimits(DEMO_LIMITS.categorical, DEMO_LIMITS.numeric, DEMO_LIMITS.prevalence, block=True)
    with pytest.raises(DataRefused, match=r"drifted from span 0 beyond the limits in \d+ places \(.*image_size"
                                          r".*nothing was trained") as refused:
        gate_span(spans["other"], tmp_path / "profile", spans["profile"], blocking)
    assert refused.value.anomalies == {} and refused.value.drift["over"]
    assert not (tmp_path / "profile" / DRIFT_FILE).exists()
    # The same limits let a span of the same source through.
    assert gate_span(spans["alike"], tmp_path / "alike", spans["profile"], blocking)["over"] == []


def test_an_earlier_pass_of_the_same_span_is_no_baseline(spans, tmp_path):
    """A run stopped after the gate and run again (its ingestion cached) finds the profile of the same Examples."""
    drift = gate_span(spans["first"], tmp_path / "again", spans["profile"], DEMO_LIMITS)
    assert drift["baseline_span"] is None and drift["over"] == []


def test_prevalence_sums_every_split():
    counts = {"train": {"examples": 8, **{label: 2 for label in LABELS}},
              "eval": {"examples": 2, **{label: 0 for label in LABELS}}}
    assert prevalence(counts) == {label: 0.2 for label in LABELS}
