"""The training part of the DAG: three member Trainers (run in parallel on Kubeflow), the Ensemble, and the study
stage (StudySequenceGen and the context Trainer, whose model is the published study model)."""

from __future__ import annotations

import dataclasses

from tfx import v1 as tfx

from components.ensemble import Ensemble
from components.study_sequences import StudySequenceGen
from ich_model.examples import TRAIN_SPLIT
from ich_model.members import MEMBERS
from ich_model.settings import ContextSettings, TrainerSettings

RUN_FN = "ich_model.trainer.run_fn"
CONTEXT_RUN_FN = "ich_model.context_trainer.run_fn"
CONTEXT_TRAINER = "context_trainer"


def trainer_id(member_name: str) -> str:
    return f"trainer_{member_name}"


def member_trainers(examples, transform_graph, settings: TrainerSettings, base_model=None) -> list:
    """One Trainer per member recipe (`trainer_a`, `trainer_b`, `trainer_c`), each with `settings` for its own
    member, each depending only on the Examples, the transform graph and the base model, so an orchestrator can
    run them side by side. `base_model` is a channel of ensembles (the latest blessed one, empty on a first
    run): each member warm-starts from its namesake there."""
    trainers = []
    for name in MEMBERS:
        member = dataclasses.replace(settings, member=name)
        trainer = tfx.components.Trainer(
            run_fn=RUN_FN,
            examples=examples,
            transform_graph=transform_graph,
            base_model=base_model,
            # TFX requires these; run_fn reads the same figures from the settings.
            train_args=tfx.proto.TrainArgs(num_steps=member.train_steps),
            eval_args=tfx.proto.EvalArgs(num_steps=member.eval_steps),
            custom_config=member.as_custom_config(),
        ).with_id(trainer_id(name))
        trainers.append(trainer)
    return trainers


def ensemble_of(trainers: list, transform_graph, examples):
    """The Ensemble component over the three member Trainers (in member order a, b, c); its OOD model is fitted
    on the members' embeddings of `examples` (the ExampleGen's raw train and eval splits)."""
    model_a, model_b, model_c = (t.outputs["model"] for t in trainers)
    return Ensemble(model_a=model_a, model_b=model_b, model_c=model_c, transform_graph=transform_graph,
                    examples=examples)


def study_stage(examples, ensemble_model, settings: ContextSettings, train_split: str = TRAIN_SPLIT) -> list:
    """StudySequenceGen over `examples` (the raw slice Examples) scored by `ensemble_model`, and the context
    Trainer (`context_trainer`) that fits the study-context model on the records of `train_split` (the members'
    own train split, or the context split held out from them) and exports the study model over the ensemble."""
    sequences = StudySequenceGen(examples=examples, model=ensemble_model)
    trainer = tfx.components.Trainer(
        run_fn=CONTEXT_RUN_FN,
        examples=sequences.outputs["study_sequences"],
        base_model=ensemble_model,
        train_args=tfx.proto.TrainArgs(splits=[train_split], num_steps=settings.train_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=1),  # run_fn scores the whole eval split itself
        custom_config=settings.as_custom_config(),
    ).with_id(CONTEXT_TRAINER)
    return [sequences, trainer]
