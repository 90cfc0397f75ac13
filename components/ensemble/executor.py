"""The Ensemble component's work: the three members' SavedModels -> one SavedModel (one Model artifact)."""

from __future__ import annotations

from tfx.utils import path_utils

from ich_model.serving import ScoringModule, load_members


def merge_members(member_uris: dict[str, str], transform_graph_uri: str, output_uri: str) -> str:
    """Load each member's serving SavedModel (`member_uris`: member name -> Model artifact URI) and export one
    ScoringModule over all of them, in TFX's serving
    layout (`<uri>/Format-Serving`) so that the Evaluator and the Pusher find it. Returns the export path."""
    members = load_members([path_utils.serving_model_path(uri) for uri in member_uris.values()])
    export_dir = path_utils.serving_model_path(output_uri)
    ScoringModule(members, list(member_uris), transform_graph_uri).save(export_dir)
    return export_dir
