"""What an exported model is: a versioned description beside its weights, and the one way back to Keras.

Every export (a member's and the ensemble's) holds `assets/model_description.json`:

    format, version          "ich-model-description", DESCRIPTION_VERSION
    project_version          the ich-pipeline release that exported it
    kind                     "member", "ensemble" or "study"
    labels, input            label order; input size, channel windows (level, width) and value range
    member_order, outputs    the order of the members along the M axis; the serving outputs and their shapes
    member (kind member):    name, architecture, network (NetworkSpec.get_config()), embedding_size,
                             recipe (ich_model/members.py), prevalence {trained_on, moved_to} (lists in
                             label order), training {steps_run, kept_at_step, warm_started, settings}
    members (kind ensemble): each member's own description, by name
    ood (ensembles exported with an OOD model; optional): method, shrinkage, threshold, fitted-on counts and the
                             share of eval split slices flagged (ich_model.ood.OodModel.description)
    slice_ensemble, context  (kind study) the description of the slice ensemble it holds, and the study-context
                             model's settings, steps and eval figures (ich_model/context_trainer.py)
    operating_points         (kind study; optional) per level and label the threshold chosen on the eval split for
                             the target sensitivity, and what it gives there (ich_model/operating_points.py)

`rebuild_member` makes the Keras network of a member from its description (`NetworkSpec.from_config`, as
keras-hub's `from_config` rebuilds a backbone from `get_config`) and gives it the exported weights, matched by
variable name. Grad-CAM and warm start use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from importlib import metadata

import numpy as np
import tensorflow as tf

from ich_model.constants import LABELS, MODEL_INPUT_SIZE, RGB_WINDOWS
from ich_model.members import Recipe
from ich_model.model.network import EMBEDDING_LAYER, NetworkSpec, build_network, tap_layer

DESCRIPTION_FORMAT = "ich-model-description"
DESCRIPTION_VERSION = 1
DESCRIPTION_FILE = "model_description.json"
MEMBER, ENSEMBLE, STUDY = "member", "ensemble", "study"
MEMBER_FIELDS = ("name", "architecture", "network", "embedding_size", "recipe", "prevalence", "training")


class DescriptionError(ValueError):
    """An export without a usable description, or one that does not fit what is asked of it."""


def project_version() -> str:
    try:
        return metadata.version("ich-pipeline")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def description_path(export_dir: str | os.PathLike) -> str:
    return os.path.join(os.fspath(export_dir), "assets", DESCRIPTION_FILE)


def member_output(member_name: str) -> str:
    """The serving output that holds one member's own probabilities."""
    return f"member_{member_name}"


def _header(kind: str, member_order: list[str], embedding_size: int) -> dict:
    """What every export's description holds; `member_order` is the order of the M axis of its outputs."""
    count, labels = len(member_order), len(LABELS)
    return {
        "format": DESCRIPTION_FORMAT, "version": DESCRIPTION_VERSION, "project_version": project_version(),
        "kind": kind, "labels": list(LABELS),
        "input": {"size": MODEL_INPUT_SIZE, "value_range": [0.0, 1.0],
                  "channels": [{"window": w.name, "level": w.level, "width": w.width} for w in RGB_WINDOWS]},
        "member_order": list(member_order),
        "outputs": {"probabilities": ["B", labels], "spread": ["B", labels],
                    "member_probabilities": ["B", count, labels], "embedding": ["B", count, embedding_size],
                    **{member_output(name): ["B", labels] for name in member_order}},
    }


def _in_label_order(values) -> list[float]:
    values = np.asarray(values, np.float64)
    if values.shape != (len(LABELS),):
        raise ValueError(f"a prevalence has one value per label ({len(LABELS)}), got shape {values.shape}")
    return [float(value) for value in values]


def member_description(name: str, spec: NetworkSpec, model: tf.keras.Model, recipe: Recipe, trained_on,
                       moved_to, steps_run: int, kept_at_step: int | None = None, warm_started: bool = False,
                       settings: dict | None = None) -> dict:
    """The description of a member export: `model` (built from `spec`) trained by `recipe` (its seed unless
    `settings` names another) for `steps_run` steps at the label prevalence `trained_on`, keeping the weights
    of step `kept_at_step` (None: the last), its output moved to `moved_to` before export."""
    embedding_size = int(tap_layer(model, EMBEDDING_LAYER).output.shape[-1])
    member = {
        "name": name, "architecture": spec.architecture, "network": spec.get_config(),
        "embedding_size": embedding_size, "recipe": dataclasses.asdict(recipe),
        "prevalence": {"trained_on": _in_label_order(trained_on), "moved_to": _in_label_order(moved_to)},
        "training": {"steps_run": int(steps_run), "kept_at_step": kept_at_step, "warm_started": bool(warm_started),
                     "settings": settings or {}},
    }
    return {**_header(MEMBER, [name], embedding_size), "member": member}


def ensemble_description(members: dict[str, dict], ood: dict | None = None) -> dict:
    """The description of an ensemble of member exports (`members`: name -> that export's description, in the
    order the ensemble stacks them); `ood`: the description of its OOD model, which adds two outputs."""
    sizes = {description["member"]["embedding_size"] for description in members.values()}
    if len(sizes) != 1:
        raise DescriptionError(f"the members' embeddings differ in size ({sorted(sizes)}): an ensemble stacks "
                               f"them, so its members must share one network")
    description = {**_header(ENSEMBLE, list(members), sizes.pop()),
                   "members": {name: d["member"] for name, d in members.items()}}
    if ood is not None:
        from ich_model.serving import OOD_SCORE, OUT_OF_DISTRIBUTION  # serving imports this module

        description["outputs"].update({OOD_SCORE: ["B"], OUT_OF_DISTRIBUTION: ["B"]})
        description["ood"] = ood
    return description


def study_description(ensemble: dict, context_entry: dict, outputs: dict[str, list],
                      operating_points: dict | None = None) -> dict:
    """The description of a study model: the slice ensemble it holds (`ensemble`, that export's description), the
    context model (`context_entry`), the study signature's `outputs` (name -> shape) and, where they were chosen,
    its `operating_points` (ich_model.operating_points.OperatingPoints.description)."""
    if ensemble.get("kind") != ENSEMBLE:
        raise DescriptionError(f"a study model holds a slice ensemble, not a {ensemble.get('kind')!r} export")
    description = {"format": DESCRIPTION_FORMAT, "version": DESCRIPTION_VERSION, "project_version": project_version(),
                   "kind": STUDY, "labels": list(LABELS), "input": ensemble["input"], "outputs": outputs,
                   "slice_ensemble": ensemble, "context": context_entry}
    if operating_points is not None:
        description["operating_points"] = operating_points
    return description


def write_description(export_dir: str | os.PathLike, description: dict) -> None:
    path = description_path(export_dir)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as out:
        out.write(json.dumps(description, indent=2, sort_keys=True) + "\n")


def read_description(export_dir: str | os.PathLike) -> dict:
    """The description of the export at `export_dir`; a DescriptionError names what is missing or unreadable."""
    path = description_path(export_dir)
    if not tf.io.gfile.exists(path):
        raise DescriptionError(
            f"{export_dir} has no model description (assets/{DESCRIPTION_FILE}): it was exported before models "
            f"described themselves, or it is not an ich-pipeline export. Its network, label prevalence and "
            f"recipe are unknown, so it cannot be rebuilt or warm-started from; retrain it with this release")
    try:
        with tf.io.gfile.GFile(path) as source:
            description = json.loads(source.read())
    except json.JSONDecodeError as error:
        raise DescriptionError(f"{path} is not valid JSON ({error})") from None
    if not isinstance(description, dict) or description.get("format") != DESCRIPTION_FORMAT:
        raise DescriptionError(f"{path} is not an ich-pipeline model description (format "
                               f"{description.get('format') if isinstance(description, dict) else None!r})")
    if not isinstance(description.get("version"), int) or description["version"] > DESCRIPTION_VERSION:
        raise DescriptionError(f"{path} is description version {description.get('version')!r}; this release reads "
                               f"versions 1 to {DESCRIPTION_VERSION}: upgrade ich-pipeline")
    key = {MEMBER: "member", ENSEMBLE: "members", STUDY: "slice_ensemble"}.get(description.get("kind"), "members")
    if description.get("kind") not in (MEMBER, ENSEMBLE, STUDY) or not isinstance(description.get(key), dict):
        raise DescriptionError(f"{path} describes neither a member, an ensemble nor a study model (kind "
                               f"{description.get('kind')!r}, no {key!r} entry)")
    if description.get("labels") != list(LABELS):
        raise DescriptionError(f"{path} has the labels {description.get('labels')}, not {list(LABELS)}")
    ood = description.get("ood")
    if ood is not None and not (isinstance(ood, dict) and isinstance(ood.get("threshold"), (int, float))):
        raise DescriptionError(f"{path}: its `ood` entry has no threshold")
    for name, entry in member_entries(description).items():
        missing = [field for field in MEMBER_FIELDS if not isinstance(entry, dict) or field not in entry]
        if missing:
            raise DescriptionError(f"{path}: member {name}'s description has no {', '.join(missing)}")
    return description


def member_entries(description: dict) -> dict[str, dict]:
    """Each member's entry by name: the one member of a member export, or every member of an ensemble (of a study
    model's slice ensemble)."""
    if description["kind"] == MEMBER:
        return {description["member"]["name"]: description["member"]}
    if description["kind"] == STUDY:
        return member_entries(description["slice_ensemble"])
    return dict(description["members"])


def member_entry(description: dict, member_name: str | None, source: str) -> tuple[str, dict]:
    """(name, description entry) of member `member_name` (None: the only member of a member export)."""
    members = member_entries(description)
    if member_name is None and len(members) == 1:
        member_name = next(iter(members))
    if member_name not in members:
        named = "names no member" if member_name is None else f"has no member {member_name!r}"
        raise DescriptionError(f"{source} {named}; name one of {', '.join(sorted(members))}")
    return member_name, members[member_name]


def network_of(entry: dict, source: str) -> NetworkSpec:
    """The NetworkSpec of a member's description entry."""
    try:
        return NetworkSpec.from_config(entry["network"])
    except (KeyError, TypeError, ValueError) as error:
        raise DescriptionError(f"{source}: member {entry.get('name')}'s network cannot be rebuilt ({error})") from None


def assign_by_name(model: tf.keras.Model, variables: list[tf.Variable], source: str) -> None:
    """Give `model` the values of `variables`, each matched to the model's variable of the same name and shape
    (their order does not matter). Any unmatched name or shape is a DescriptionError that names it."""
    by_name = {}
    for variable in variables:
        if variable.name in by_name:
            raise DescriptionError(f"{source} holds two variables named {variable.name}")
        by_name[variable.name] = variable
    targets = {variable.name: variable for variable in model.variables}
    missing, unexpected = sorted(set(targets) - set(by_name)), sorted(set(by_name) - set(targets))
    misshapen = sorted(name for name in set(targets) & set(by_name)
                       if tuple(targets[name].shape) != tuple(by_name[name].shape))
    if missing or unexpected or misshapen:
        def first(names):
            return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "") or "none"
        raise DescriptionError(f"{source} does not fit {model.name}: missing {first(missing)}; unexpected "
                               f"{first(unexpected)}; other shapes {first(misshapen)}")
    for name, target in targets.items():
        target.assign(by_name[name])


def _member_variables(loaded, description: dict, member_name: str) -> list[tf.Variable]:
    if description["kind"] == MEMBER:
        return list(loaded.member_variables)
    if description["kind"] == STUDY:  # the slice ensemble is the study model's `ensemble`
        loaded = getattr(loaded, "ensemble", None)
    members = getattr(loaded, "loaded_members", None)
    if not isinstance(members, dict) or member_name not in members:
        raise DescriptionError(f"the ensemble holds no weights for member {member_name!r}")
    return list(members[member_name].member_variables)


def rebuild_member(export_dir: str | os.PathLike, member_name: str | None = None, loaded=None) -> tf.keras.Model:
    """The Keras network of member `member_name` (may be omitted for a member export) of the export at
    `export_dir`, built from its description and given its exported weights. `loaded`: the export already
    loaded with tf.saved_model.load, to save loading it again."""
    description = read_description(export_dir)
    member_name, entry = member_entry(description, member_name, str(export_dir))
    model = build_network(network_of(entry, str(export_dir)), name=f"member_{member_name}")
    loaded = tf.saved_model.load(os.fspath(export_dir)) if loaded is None else loaded
    assign_by_name(model, _member_variables(loaded, description, member_name),
                   f"member {member_name} of {export_dir}")
    return model


def rebuild_members(export_dir: str | os.PathLike, loaded=None) -> dict[str, tf.keras.Model]:
    """Every member of an export, rebuilt (rebuild_member), by name."""
    loaded = tf.saved_model.load(os.fspath(export_dir)) if loaded is None else loaded
    names = sorted(member_entries(read_description(export_dir)))
    return {name: rebuild_member(export_dir, name, loaded) for name in names}
