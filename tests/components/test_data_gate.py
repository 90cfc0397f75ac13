"""The DataGate's drift check on spans ingested, described and validated by the real executors (DicomExampleGen,
TFX's StatisticsGen and ExampleValidator with the committed schema): a span of the same source drifts less than
the limits from the one before it; a span from another scanner and case mix drifts beyond them from the training
window, is reported with the measures that TFDV gives on the window's own Examples, and is refused when the limits
block; the window keeps the last `span_window` spans that passed."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tfx import types
from tfx import v1 as tfx
from tfx.components.example_validator.executor import Executor as ValidatorExecutor
from tfx.components.statistics_gen.executor import Executor as StatisticsExecutor
from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
from tfx.types import standard_artifacts, standard_component_specs
from tfx.utils import proto_utils

from components.data_gate.executor import DRIFT_FILE, WINDOW_FILE, DataRefused, DriftLimits, gate, prevalence
from components.dicom_example_gen.component import DicomExampleGen
from components.dicom_example_gen.executor import LABEL_COUNTS, POPULATION, REPORT_FILE
from ich_model.constants import LABELS
from ich_model.examples import POPULATION_CATEGORICAL, POPULATION_NUMERIC
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


def described_span(root: Path, name: str, span: int, **synth) -> dict[str, Path]:
    """One span through DicomExampleGen, StatisticsGen and ExampleValidator (the committed schema): their URIs."""
    generate_dataset(root / f"{name}-dicom", slices_per_study=4, progress=False, **synth)
    examples = run_example_gen(DicomExampleGen(str(root / f"{name}-dicom"), max_reject_share=0.0),
                               root / f"{name}-examples", span=span)
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


def gate_span(span: dict[str, Path], profile: Path, baseline: Path | None, limits: DriftLimits,
              span_window: int = 0) -> dict:
    profile.mkdir(parents=True, exist_ok=True)
    return gate(str(span["anomalies"]), str(span["schema"]), str(span["examples"]),
                str(baseline) if baseline else None, str(profile), limits, span_window)


def window_spans(profile: Path) -> list[int]:
    return [entry["span"] for entry in json.loads((profile / WINDOW_FILE).read_text())["spans"]]


def examples_of(*examples_dirs: Path) -> list:
    return [example for examples_dir in examples_dirs for split in ("train", "eval")
            for example in read_split(examples_dir, split)]


def tfdv_statistics(examples: list):
    """TFDV's statistics of the population features of the Examples as read from disk."""
    frame = {}
    for name in (*POPULATION_CATEGORICAL, *POPULATION_NUMERIC):
        values = [example.features.feature[name] for example in examples]
        frame[name] = ([value.bytes_list.value[0].decode() for value in values] if name in POPULATION_CATEGORICAL
                       else [(value.float_list.value or value.int64_list.value)[0] for value in values])
    return tfdv.generate_statistics_from_dataframe(pd.DataFrame(frame))


@pytest.fixture(scope="module")
def spans(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift")
    first = described_span(root, "first", 1, patients=60, seed=41, size=96, positive_fraction=0.3)
    # Another draw from the same source: another seed, the same sizes and case mix.
    alike = described_span(root, "alike", 2, patients=60, seed=42, size=96, positive_fraction=0.3)
    # Another scanner and case mix: larger images, every nuisance outside the training ranges, most studies bleed.
    other = described_span(root, "other", 3, patients=40, seed=43, size=128, positive_fraction=0.9, shift=True)
    profile = root / "first-profile"
    first_drift = gate_span(first, profile, None, DEMO_LIMITS)
    return {"root": root, "first": first, "alike": alike, "other": other, "profile": profile,
            "first_drift": first_drift}


def test_the_ingestion_report_counts_each_population_value_of_each_split(spans):
    examples_dir = spans["first"]["examples"]
    report = json.loads((examples_dir / REPORT_FILE).read_text())
    for split in ("train", "eval"):
        examples = list(read_split(examples_dir, split))
        for name in (*POPULATION_CATEGORICAL, *POPULATION_NUMERIC):
            expected = Counter()
            for example in examples:
                feature = example.features.feature[name]
                value = (feature.bytes_list.value or feature.float_list.value or feature.int64_list.value)[0]
                expected[value.decode() if isinstance(value, bytes) else value] += 1
            assert dict((value, n) for value, n in report[POPULATION][split][name]) == expected, (split, name)


def test_a_first_span_has_nothing_to_compare_with_and_leaves_its_counts_in_its_profile(spans):
    assert spans["first_drift"]["baseline_spans"] == [] and spans["first_drift"]["over"] == []
    profile = spans["profile"]
    report = json.loads((spans["first"]["examples"] / REPORT_FILE).read_text())
    [entry] = json.loads((profile / WINDOW_FILE).read_text())["spans"]
    assert entry["span"] == 1 and entry[LABEL_COUNTS] == report[LABEL_COUNTS]
    assert entry[POPULATION] == report[POPULATION]
    assert json.loads((profile / DRIFT_FILE).read_text())["span"] == 1


def test_a_span_from_the_same_source_stays_within_the_demo_limits(spans, tmp_path):
    drift = gate_span(spans["alike"], tmp_path / "profile", spans["profile"], DEMO_LIMITS)
    assert drift["baseline_spans"] == [1]
    assert drift["over"] == [], drift
    assert drift_line(drift).startswith(
        f"drift from span 1 (limits: L-infinity {DEMO_LIMITS.categorical:g}, Jensen-Shannon {DEMO_LIMITS.numeric:g}, "
        f"prevalence change {DEMO_LIMITS.prevalence:g}): none beyond; nearest: ")
    assert set(drift["features"]) == {"intercept_group", "image_size", "pixel_spacing_mm", "rescale_intercept",
                                      "slice_count"}
    assert window_spans(tmp_path / "profile") == [1, 2]


def test_a_span_from_another_scanner_is_measured_against_the_whole_window_as_tfdv_measures_it(spans, tmp_path):
    first, alike, other = spans["first"], spans["alike"], spans["other"]
    gate_span(alike, tmp_path / "alike", spans["profile"], DEMO_LIMITS)
    drift = gate_span(other, tmp_path / "other", tmp_path / "alike", DEMO_LIMITS)
    assert drift["baseline_spans"] == [1, 2]
    over = " ".join(drift["over"])
    # Sizes of 96 against 128 (each give or take a few pixels): nearly every share moved.
    assert drift["features"]["image_size"]["value"] > 0.9 and "image_size: L-infinity" in over
    # Its larger field of view at 128 px overlaps the window's pixel spacing in part; the demo limit still sees it.
    assert "pixel_spacing_mm: Jensen-Shannon" in over
    assert "any prevalence" in over
    line = drift_line(drift)
    assert line.startswith("drift from spans 1-2 ")
    assert "(reported; drift_blocks_training is off)" in line and all(item in line for item in drift["over"])
    # Every figure is TFDV's with the same comparators, on the Examples of spans 1 and 2 together against span 3's.
    schema = tfdv.load_schema_text(str(first["schema"]))
    for name in (*POPULATION_CATEGORICAL, *POPULATION_NUMERIC):
        comparator = tfdv.get_feature(schema, name).drift_comparator
        if name in POPULATION_CATEGORICAL:
            comparator.infinity_norm.threshold = 0.0
        else:
            comparator.jensen_shannon_divergence.threshold = 0.0
    measured = tfdv.validate_statistics(tfdv_statistics(examples_of(other["examples"])), schema,
                                        previous_statistics=tfdv_statistics(examples_of(first["examples"],
                                                                                        alike["examples"])))
    expected = {".".join(info.path.step): info.drift_measurements[0].value for info in measured.drift_skew_info}
    assert set(expected) == set(drift["features"])
    for name, value in expected.items():
        assert drift["features"][name]["value"] == pytest.approx(value, abs=1e-4), name
    # The prevalence against the Examples themselves.
    labels = {name: np.array([e.features.feature["label"].int64_list.value for e in examples_of(*dirs)])
              for name, dirs in (("window", (first["examples"], alike["examples"])), ("other", (other["examples"],)))}
    for index, label in enumerate(LABELS):
        entry = drift["prevalence"][label]
        assert entry["baseline"] == pytest.approx(labels["window"][:, index].mean(), abs=1e-4)
        assert entry["span"] == pytest.approx(labels["other"][:, index].mean(), abs=1e-4)
    # Reported, not refused (the limits do not block): span 3 closes the window.
    assert window_spans(tmp_path / "other") == [1, 2, 3]


def test_the_window_keeps_the_last_span_window_spans_that_passed(spans, tmp_path):
    gate_span(spans["alike"], tmp_path / "alike", spans["profile"], DEMO_LIMITS, span_window=2)
    assert window_spans(tmp_path / "alike") == [1, 2]
    drift = gate_span(spans["other"], tmp_path / "other", tmp_path / "alike", DEMO_LIMITS, span_window=2)
    assert drift["baseline_spans"] == [1, 2]  # what the last run trained on
    assert window_spans(tmp_path / "other") == [2, 3]
    gate_span(spans["other"], tmp_path / "one", tmp_path / "alike", DEMO_LIMITS, span_window=1)
    assert window_spans(tmp_path / "one") == [3]


def test_drift_beyond_limits_that_block_refuses_the_span_and_writes_no_profile(spans, tmp_path):
    blocking = DriftLimits(DEMO_LIMITS.categorical, DEMO_LIMITS.numeric, DEMO_LIMITS.prevalence, block=True)
    with pytest.raises(DataRefused, match=r"drifted from span 1 beyond the limits in \d+ places \(.*image_size"
                                          r".*nothing was trained") as refused:
        gate_span(spans["other"], tmp_path / "profile", spans["profile"], blocking)
    assert refused.value.anomalies == {} and refused.value.drift["over"]
    assert not (tmp_path / "profile" / DRIFT_FILE).exists() and not (tmp_path / "profile" / WINDOW_FILE).exists()
    # The same limits let a span of the same source through.
    assert gate_span(spans["alike"], tmp_path / "alike", spans["profile"], blocking)["over"] == []


def test_an_earlier_pass_of_the_same_span_is_no_baseline(spans, tmp_path):
    """A run stopped after the gate and run again (its ingestion cached, or its folder ingested again) finds its
    own span's profile."""
    drift = gate_span(spans["first"], tmp_path / "again", spans["profile"], DEMO_LIMITS)
    assert drift["baseline_spans"] == [] and drift["over"] == []
    assert window_spans(tmp_path / "again") == [1]


def test_prevalence_sums_every_split_of_every_span():
    counts = {"train": {"examples": 8, **{label: 2 for label in LABELS}},
              "eval": {"examples": 2, **{label: 0 for label in LABELS}}}
    assert prevalence([counts]) == {label: 0.2 for label in LABELS}
    assert prevalence([counts, {"train": {"examples": 10, **{label: 0 for label in LABELS}}}]) == {
        label: 0.1 for label in LABELS}
