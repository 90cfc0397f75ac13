"""A Pusher whose versions a reader never sees half-written, and that publishes one model once.

TFX's filesystem Pusher copies the model straight into `<serving>/<version>/` (saved_model.pb last); a kill -9 or a
full disk part way leaves a version folder that a reader of the newest version would load and fail on. This one
lets TFX copy into a staging folder beside the serving folder (`.<serving>.staging/<version>/`) and renames the
version into `<serving>/<version>/` once complete: a rename within one local or POSIX file system is atomic (on an
object store it is a copy, as TFX's own push is), so the serving folder holds complete versions only. What a
stopped push left in the staging folder is removed by the next push (one writer per pipeline root): TFX skips the
copy into a version folder that exists, which would otherwise publish the leftover. A model whose SavedModel
fingerprint a version already holds is not copied again: a run stopped after its push and run again records that
version as its push.
"""

from __future__ import annotations

import os

import tensorflow as tf
from tfx.components.pusher import executor as pusher_executor
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from ich_model.serving_folder import SAVED_MODEL, is_complete, pushed_versions

FINGERPRINT = "fingerprint.pb"  # written by tf.saved_model.save since TensorFlow 2.12


def staging_dir(serving_dir: str) -> str:
    """The staging folder of a serving folder: its sibling, so that a version moves by a rename."""
    parent, name = os.path.split(serving_dir.rstrip("/"))
    return os.path.join(parent, f".{name}.staging")


def _fingerprint(model_dir: str) -> bytes | None:
    path = os.path.join(model_dir, FINGERPRINT)
    return tf.io.gfile.GFile(path, "rb").read() if tf.io.gfile.exists(path) else None


def version_holding(serving_dir: str, fingerprint: bytes | None) -> str | None:
    """The pushed version (its folder) whose SavedModel has `fingerprint`, if any."""
    if fingerprint is None:
        return None
    for name in pushed_versions(serving_dir):
        if _fingerprint(os.path.join(serving_dir, name)) == fingerprint:
            return os.path.join(serving_dir, name)
    return None


class Executor(pusher_executor.Executor):
    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802 - TFX's name
        destination = proto_utils.json_to_proto(
            exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], pusher_pb2.PushDestination())
        self._serving_dir = destination.filesystem.base_directory
        if self.CheckBlessing(input_dict):
            pushed = version_holding(self._serving_dir, _fingerprint(self.GetModelPath(input_dict)))
            if pushed is not None:
                model_push = artifact_utils.get_single_instance(
                    output_dict[standard_component_specs.PUSHED_MODEL_KEY])
                super()._MarkPushed(model_push, pushed, os.path.basename(pushed))
                return
        staging = staging_dir(self._serving_dir)
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
        staged = pusher_pb2.PushDestination()
        staged.CopyFrom(destination)
        staged.filesystem.base_directory = staging
        super().Do(input_dict, output_dict, {
            **exec_properties, standard_component_specs.PUSH_DESTINATION_KEY: proto_utils.proto_to_json(staged)})

    def _MarkPushed(self, model_push, pushed_destination: str, pushed_version: str | None = None) -> None:  # noqa: N802
        """Called by TFX's Do once the copy is complete: the rename that publishes it."""
        if not is_complete(pushed_destination):
            raise RuntimeError(f"{pushed_destination} has no {SAVED_MODEL} after the copy: not published")
        final = os.path.join(self._serving_dir, os.path.basename(pushed_destination.rstrip("/")))
        tf.io.gfile.makedirs(self._serving_dir)
        if not tf.io.gfile.exists(final):
            tf.io.gfile.rename(pushed_destination, final)
        super()._MarkPushed(model_push, final, pushed_version)
