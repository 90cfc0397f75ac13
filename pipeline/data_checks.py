"""What every span is checked against before it trains: the committed schema and the statistics it is read from.

The schema (`pipeline/schema.pbtxt`) is curated, not inferred: SchemaGen re-infers a schema from each span's own
statistics, so a span could hardly ever break it, and its string domains listed the identifiers of small sets.
The schema puts the identifiers in a domain that is not categorical, and StatisticsGen, given the schema, keeps
no values of such a feature (only the sketch-based top-k generator honours that): an identifier has no
distribution worth a statistic, and its most frequent values would carry identifiers into the statistics and the
report.
"""

from __future__ import annotations

from pathlib import Path

from ich_model.examples import IMAGE_ID, PATIENT_ID, SERIES_UID, STUDY_UID

SCHEMA_FILE = str(Path(__file__).with_name("schema.pbtxt"))
# Where the Dockerfile puts the same file in the pipeline image (WORKDIR /pipeline, COPY pipeline ./pipeline).
IMAGE_SCHEMA_FILE = "/pipeline/pipeline/schema.pbtxt"
IDENTIFIERS = (IMAGE_ID, PATIENT_ID, STUDY_UID, SERIES_UID)


def statistics_options(sample_rate: float):
    """TFDV's options for StatisticsGen (which adds the schema): a random `sample_rate` share of the Examples."""
    import tensorflow_data_validation as tfdv

    return tfdv.StatsOptions(sample_rate=sample_rate, use_sketch_based_topk_uniques=True)
