"""Ensemble: merges the three cascade members into one Model artifact for the Evaluator and the Pusher.

The ensemble's `serving_default` parses and transforms the raw Examples once, runs the members on the same
images and returns `probabilities` (member mean), `spread` (standard deviation between members),
`member_probabilities` ([B, 3, 6]), `embedding` ([B, 3, D]: each member's pooled features) and `member_a`,
`member_b`, `member_c` ([B, 6] each), and the out-of-distribution `ood_score` and `out_of_distribution` ([B]:
ich_model/ood.py, fitted here on the members' embeddings of the `examples`' train split, its threshold set on
their eval split). Its description lists the members' own and the OOD model's figures.
"""

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Examples, Model, TransformGraph

from components.ensemble.executor import merge_members


@component
def Ensemble(  # noqa: N802 - TFX components are named like classes
    model_a: InputArtifact[Model],
    model_b: InputArtifact[Model],
    model_c: InputArtifact[Model],
    transform_graph: InputArtifact[TransformGraph],
    examples: InputArtifact[Examples],
    model: OutputArtifact[Model],
) -> None:
    merge_members({"a": model_a.uri, "b": model_b.uri, "c": model_c.uri}, transform_graph.uri, examples.uri,
                  model.uri)
