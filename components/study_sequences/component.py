"""StudySequenceGen: the input of the study-context stage, as an Examples artifact with the slice Examples'
splits (so the patient split holds): one record per series (ich_model/context.py), scored by the slice ensemble.
"""

from __future__ import annotations

from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import ComponentSpec, standard_artifacts
from tfx.types.component_spec import ChannelParameter

from components.study_sequences.executor import EXAMPLES_KEY, MODEL_KEY, STUDY_SEQUENCES_KEY, Executor


class StudySequenceGenSpec(ComponentSpec):
    PARAMETERS = {}
    INPUTS = {
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
    }
    OUTPUTS = {STUDY_SEQUENCES_KEY: ChannelParameter(type=standard_artifacts.Examples)}


class StudySequenceGen(base_beam_component.BaseBeamComponent):
    """Scores every slice Example with the ensemble's serving signature, groups the slices by study and series,
    orders them along the slice normal and writes one record per series to `Split-<split>/`, with a report
    (`study_sequences_report.json`: series, slices, the longest series, missing and duplicate positions per
    split) beside them and its counts as artifact properties. Streams in Beam: no split is held in memory, only
    one series' slices (embeddings, no pixels) at a time."""

    SPEC_CLASS = StudySequenceGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel):
        super().__init__(spec=StudySequenceGenSpec(
            examples=examples, model=model, study_sequences=types.Channel(type=standard_artifacts.Examples)))
