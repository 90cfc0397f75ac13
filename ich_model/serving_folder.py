"""The serving folder that the Pusher publishes into: one SavedModel folder per pushed version, named by its push
time in seconds (`<serving>/<timestamp>/`). TFX's Pusher copies a version's saved_model.pb after every other file,
so a version without it is a push that was stopped (a kill, a full disk): a reader passes it over."""

from __future__ import annotations

import os
import sys

import tensorflow as tf

SAVED_MODEL = "saved_model.pb"


def pushed_versions(serving_dir: str | os.PathLike) -> list[str]:
    """The version folders' names, oldest push first (complete or not); [] if there is no such folder."""
    serving_dir = os.fspath(serving_dir)
    if not tf.io.gfile.isdir(serving_dir):
        return []
    return sorted((name.rstrip("/") for name in tf.io.gfile.listdir(serving_dir) if name.rstrip("/").isdigit()),
                  key=int)


def is_complete(model_dir: str | os.PathLike) -> bool:
    return tf.io.gfile.exists(os.path.join(os.fspath(model_dir), SAVED_MODEL))


def newest_model_dir(path: str | os.PathLike, warn=None) -> str:
    """A SavedModel folder itself, or a serving folder's newest complete version; a newer version that is not
    complete is named in a warning (`warn`, default: standard error). ValueError when there is neither."""
    path = os.fspath(path)
    if is_complete(path):
        return path
    versions = pushed_versions(path)
    complete = [name for name in versions if is_complete(os.path.join(path, name))]
    if not complete:
        raise ValueError(f"--model {path}: neither a SavedModel nor a serving folder of pushed versions"
                         + (f" (its {len(versions)} version folder(s) have no {SAVED_MODEL}: pushes that were "
                            f"stopped)" if versions else ""))
    warn = warn or (lambda message: print(message, file=sys.stderr, flush=True))
    for name in versions[versions.index(complete[-1]) + 1:]:
        warn(f"warning: {os.path.join(path, name)} has no {SAVED_MODEL} (a push that was stopped); using "
             f"{complete[-1]}")
    return os.path.join(path, complete[-1])
