"""What every span is checked against before it trains: the committed schema and the statistics it is read from.

The schema (`pipeline/schema.pbtxt`) is curated, not inferred: SchemaGen re-infers a schema from each span's own
statistics, so a span could hardly ever break it, and its string domains listed the identifiers of small sets.
StatisticsGen leaves the identifiers and the pixels out (an identifier has no distribution worth a statistic, and
its top values would carry identifiers into the statistics and the report); the schema gives them no presence or
domain, so ExampleValidator does not miss them. The ExampleGen writes every feature of every Example.
"""

from __future__ import annotations

from pathlib import Path

from ich_model.examples import IMAGE_ID, PATIENT_ID, PIXELS, RAW_FEATURE_SPEC, SERIES_UID, STUDY_UID

SCHEMA_FILE = str(Path(__file__).with_name("schema.pbtxt"))
# Where the Dockerfile puts the same file in the pipeline image (WORKDIR /pipeline, COPY pipeline ./pipeline).
IMAGE_SCHEMA_FILE = "/pipeline/pipeline/schema.pbtxt"
IDENTIFIERS = (IMAGE_ID, PATIENT_ID, STUDY_UID, SERIES_UID)
# Every raw feature but the identifiers and the pixels, in a fixed order.
STATISTICS_FEATURES = tuple(name for name in RAW_FEATURE_SPEC if name not in (*IDENTIFIERS, PIXELS))


def statistics_options(sample_rate: float):
    """TFDV's options for StatisticsGen: the STATISTICS_FEATURES of a random `sample_rate` share of the Examples."""
    import tensorflow_data_validation as tfdv

    return tfdv.StatsOptions(sample_rate=sample_rate, feature_allowlist=list(STATISTICS_FEATURES))
