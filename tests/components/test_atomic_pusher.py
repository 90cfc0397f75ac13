"""The AtomicPusher's executor on real SavedModels and real processes: a version appears in the serving folder
complete or not at all, a push killed (-9) part way leaves the serving folder as it was, and a model is published
once however often its push runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tensorflow as tf
from tfx.types import standard_artifacts
from tfx.utils import path_utils

from components.atomic_pusher.executor import staging_dir
from ich_model.serving_folder import SAVED_MODEL, newest_model_dir
from tests.pipeline_helpers import run_pusher


def save_model(path: Path, scale: float, padding_bytes: int = 0) -> Path:
    """A Model artifact's folder as a Trainer leaves it (the SavedModel in Format-Serving/) that multiplies by
    `scale`; `padding_bytes` of zeros in an asset make its copy take a while."""
    module = tf.Module()
    module.scale = tf.Variable(scale)
    module.serve = tf.function(lambda x: x * module.scale, input_signature=[tf.TensorSpec([None], tf.float32)])
    export = path_utils.serving_model_dir(str(path))
    tf.saved_model.save(module, export)
    if padding_bytes:
        with open(Path(export, "assets", "padding.bin"), "wb") as f:
            f.truncate(padding_bytes)
    return path


def push(model_dir: Path, serving: Path, blessed: bool = True, out: Path | None = None):
    """The executor as the pipeline runs it: the model, its blessing, the serving folder as the destination."""
    out = out or model_dir.parent / f"push-{time.monotonic_ns()}"
    model, blessing = standard_artifacts.Model(), standard_artifacts.ModelBlessing()
    model.uri, blessing.uri = str(model_dir), str(out / "blessing")
    blessing.set_int_custom_property("blessed", int(blessed))
    return run_pusher(model, blessing, serving, out / "pushed")


def versions(serving: Path) -> list[str]:
    return sorted(os.listdir(serving)) if serving.exists() else []


def test_a_blessed_model_is_published_complete_once_and_an_unblessed_one_not_at_all(tmp_path):
    serving = tmp_path / "serving"
    first = save_model(tmp_path / "first", 2.0)
    assert push(first, serving, blessed=False).get_int_custom_property("pushed") == 0 and versions(serving) == []
    pushed = push(first, serving)
    [version] = versions(serving)
    assert pushed.get_int_custom_property("pushed") == 1
    assert pushed.get_string_custom_property("pushed_destination") == str(serving / version)
    assert (serving / version / SAVED_MODEL).exists() and os.listdir(staging_dir(str(serving))) == []
    # The same model pushed again (a run stopped after its push, run again): recorded as that version, not copied.
    again = push(first, serving)
    assert versions(serving) == [version] and again.get_string_custom_property("pushed_destination") == str(
        serving / version)
    time.sleep(1.1)  # versions are Unix seconds
    second = save_model(tmp_path / "second", 3.0)
    push(second, serving)
    assert len(versions(serving)) == 2
    loaded = tf.saved_model.load(newest_model_dir(str(serving)))
    assert float(loaded.serve(tf.constant([1.0]))[0]) == 3.0


def test_a_push_killed_part_way_leaves_the_serving_folder_as_it_was(tmp_path):
    serving = tmp_path / "serving"
    push(save_model(tmp_path / "old", 2.0), serving)
    before = versions(serving)
    # 1 GB of an asset: its copy takes seconds (4.7 s measured here), so the kill lands inside it.
    large = save_model(tmp_path / "large", 5.0, padding_bytes=1 << 30)
    process = None
    try:
        script = textwrap.dedent(f"""
            import sys
            from pathlib import Path
            sys.path.insert(0, {str(Path(__file__).parents[2])!r})
            from tests.components.test_atomic_pusher import push  # `tests` first: IPython's own comes on sys.path
            push(Path({str(large)!r}), Path({str(serving)!r}), out=Path({str(tmp_path / "killed")!r}))
        """)
        process = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
        staging = Path(staging_dir(str(serving)))
        deadline = time.monotonic() + 120
        while not (any(staging.glob("*/assets/padding.bin")) or time.monotonic() > deadline):
            time.sleep(0.05)
        time.sleep(0.3)
        assert process.poll() is None, "the push ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        [partial] = staging.iterdir()
        assert not (partial / SAVED_MODEL).exists()  # stopped during the copy
        assert versions(serving) == before  # a reader sees only what was there
        loaded = tf.saved_model.load(newest_model_dir(str(serving)))
        assert float(loaded.serve(tf.constant([1.0]))[0]) == 2.0
        # Run again at once (in the same second, TFX would name the same version): the leftover is cleared first, the
        # push completes, one new version, complete.
        pushed = push(large, serving)
        assert [p.name for p in staging.iterdir()] == []
        assert len(versions(serving)) == len(before) + 1
        assert Path(pushed.get_string_custom_property("pushed_destination"), SAVED_MODEL).exists()
    finally:
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
        for path in tmp_path.rglob("padding.bin"):
            path.unlink()  # 1 GB each: the model, the push that was killed, the one that completed, its artifact


@pytest.mark.parametrize("serving, staging", [("/data/serving", "/data/.serving.staging"),
                                              ("gs://bucket/models/ich/", "gs://bucket/models/.ich.staging")])
def test_the_staging_folder_is_the_serving_folder_s_sibling(serving, staging):
    assert staging_dir(serving) == staging
