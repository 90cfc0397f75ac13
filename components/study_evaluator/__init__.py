"""StudyEvaluator: the study model scored by study on the eval split, evaluated per slice and per study in TFMA,
and blessed against floors and the last blessed model."""

from components.study_evaluator.component import StudyEvaluator

__all__ = ["StudyEvaluator"]
