"""Which pushed version a reader of the serving folder takes (`ich predict --model SERVING_DIR`): the newest one
that is complete. A push stopped part way (a kill -9 of the Pusher, a full disk) leaves what TFX's Pusher has
copied by then: every file but saved_model.pb, which it copies last."""

from __future__ import annotations

import pytest
import tensorflow as tf
from tfx.utils import io_utils

from ich_model.serving_folder import SAVED_MODEL, newest_model_dir


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.serve = tf.function(lambda x: x * module.scale, input_signature=[tf.TensorSpec([None], tf.float32)])
    path = tmp_path_factory.mktemp("model") / "export"
    tf.saved_model.save(module, str(path))
    return path


def push(model, serving, version: str, stopped: bool = False) -> None:
    """What TFX's Pusher executor copies: the folder without saved_model.pb, then (unless stopped) that file."""
    io_utils.copy_dir(str(model), str(serving / version), deny_regex_patterns=[r"saved_model\.pb"])
    if not stopped:
        io_utils.copy_file(str(model / SAVED_MODEL), str(serving / version / SAVED_MODEL))


def test_the_newest_complete_version_is_taken_and_a_stopped_push_is_passed_over(saved_model, tmp_path, capsys):
    serving = tmp_path / "serving"
    push(saved_model, serving, "1700000000")
    push(saved_model, serving, "1700000500")
    push(saved_model, serving, "1700000900", stopped=True)
    assert (serving / "1700000900" / "variables").is_dir()  # most of the model is there, but it cannot load
    with pytest.raises(OSError):
        tf.saved_model.load(str(serving / "1700000900"))
    chosen = newest_model_dir(str(serving))
    assert chosen == str(serving / "1700000500")
    loaded = tf.saved_model.load(chosen)
    assert float(loaded.serve(tf.constant([3.0]))[0]) == 6.0
    assert "1700000900 has no saved_model.pb (a push that was stopped); using 1700000500" in capsys.readouterr().err
    assert newest_model_dir(str(saved_model)) == str(saved_model)  # a SavedModel folder is itself


def test_a_serving_folder_of_stopped_pushes_only_is_refused(saved_model, tmp_path):
    serving = tmp_path / "serving"
    push(saved_model, serving, "1700000000", stopped=True)
    with pytest.raises(ValueError, match="1 version folder.* have no saved_model.pb: pushes that were stopped"):
        newest_model_dir(str(serving))
    with pytest.raises(ValueError, match="neither a SavedModel nor a serving folder"):
        newest_model_dir(str(tmp_path / "nothing"))
