"""`ich synth`: synthetic head-CT slices with haemorrhage, in the RSNA 2019 download's exact layout."""

from ich_model.synth.dataset import (
    DEFAULT_POSITIVE_FRACTION,
    IMAGES_DIR,
    LABELS_CSV,
    RenderedSlice,
    RenderedStudy,
    StudyPlan,
    SynthSummary,
    generate_dataset,
    parse_slices_per_study,
    plan_studies,
    render_study,
)

__all__ = [
    "DEFAULT_POSITIVE_FRACTION",
    "IMAGES_DIR",
    "LABELS_CSV",
    "RenderedSlice",
    "RenderedStudy",
    "StudyPlan",
    "SynthSummary",
    "generate_dataset",
    "parse_slices_per_study",
    "plan_studies",
    "render_study",
]
