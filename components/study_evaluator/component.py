"""StudyEvaluator: TFMA over a study model's outputs, which TFX's Evaluator cannot compute itself.

TFX's Evaluator runs a model on batches of Examples that cut across studies; a study model needs each study's
slices together. This component groups the eval split's slice Examples by study, runs the candidate (and the
baseline, when there is one) on each whole study, and hands TFMA one row per slice (`level` "slice") and one per
study (`level` "study"), each holding the label and every model's outputs. TFMA evaluates them model-agnostically
with the given EvalConfig (pipeline/study_evaluation.py) and its validation decides the blessing, written as TFX's
Evaluator writes it (a BLESSED or NOT_BLESSED file and the `blessed`, `current_model_id`, ... properties), so the
Pusher and the LatestBlessedModelStrategy read it unchanged.
"""

from __future__ import annotations

import tensorflow_model_analysis as tfma
from tfx import types
from tfx.dsl.components.base import base_beam_component, executor_spec
from tfx.types import ComponentSpec, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.utils import proto_utils

from components.study_evaluator.executor import (
    BASELINE_MODEL_KEY,
    BLESSING_KEY,
    EVAL_CONFIG_KEY,
    EVALUATION_KEY,
    EXAMPLE_SPLIT_KEY,
    EXAMPLES_KEY,
    MODEL_KEY,
    Executor,
)


class StudyEvaluatorSpec(ComponentSpec):
    PARAMETERS = {EVAL_CONFIG_KEY: ExecutionParameter(type=str), EXAMPLE_SPLIT_KEY: ExecutionParameter(type=str)}
    INPUTS = {
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        BASELINE_MODEL_KEY: ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {
        EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation),
        BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
    }


class StudyEvaluator(base_beam_component.BaseBeamComponent):
    """Scores `examples`' `example_split` study by study with `model` (a study model; a slice ensemble also
    serves, as a model without context) and `baseline_model`, evaluates with `eval_config` and blesses."""

    SPEC_CLASS = StudyEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel, eval_config: tfma.EvalConfig,
                 baseline_model: types.BaseChannel | None = None, example_split: str = "eval"):
        super().__init__(spec=StudyEvaluatorSpec(
            examples=examples, model=model, baseline_model=baseline_model,
            eval_config=proto_utils.proto_to_json(eval_config), example_split=example_split,
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing)))
