"""StudySequenceGen: slice Examples and the slice ensemble -> one record per series of a study, ordered along z."""

from components.study_sequences.component import StudySequenceGen

__all__ = ["StudySequenceGen"]
