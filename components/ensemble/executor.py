"""The Ensemble component's work: the three members' SavedModels -> one SavedModel (one Model artifact)."""

from __future__ import annotations

from tfx.utils import path_utils

from ich_model.description import ensemble_description, read_description
from ich_model.serving import ScoringModule, load_members


def merge_members(member_uris: dict[str, str], transform_graph_uri: str, output_uri: str) -> str:
    """Load each member's serving SavedModel (`member_uris`: member name -> Model artifact URI) and export one
    ScoringModule over all of them, described by the members' own descriptions, in TFX's serving layout
    (`<uri>/Format-Serving`) so that the Evaluator and the Pusher find it. Returns the export path."""
    member_dirs = {name: path_utils.serving_model_path(uri) for name, uri in member_uris.items()}
    description = ensemble_description({name: read_description(path) for name, path in member_dirs.items()})
    members = load_members(list(member_dirs.values()))
    export_dir = path_utils.serving_model_path(output_uri)
    ScoringModule(members, list(member_dirs), transform_graph_uri, description).save(export_dir)
    return export_dir
