"""The pinned stack is what the code runs on."""

import importlib.metadata as md
import os
import subprocess
import sys
from pathlib import Path


def test_tf_keras_is_keras_2():
    import tensorflow as tf

    assert os.environ["TF_USE_LEGACY_KERAS"] == "1"
    assert tf.keras.__name__.startswith("tf_keras")
    assert md.version("tf_keras").startswith("2.16")


def test_pinned_versions():
    assert md.version("tfx") == "1.16.0"
    assert md.version("apache-beam") == "2.59.0"
    assert md.version("protobuf").startswith("3.20")
    assert md.version("kfp").startswith("2.5.")
    assert md.version("pydicom").startswith("3.0.")
    assert sys.version_info[:2] == (3, 10)


def test_ich_command_sets_legacy_keras_before_python_starts():
    """`ich` started without the variable restarts itself with it, so TensorFlow sees Keras 2."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    probe = ("import os, sys; sys.argv = ['ich', '--help']; "
             "os.execv = lambda exe, argv: print('re-exec', argv[1:3]) or sys.exit(0); "
             "from pipeline.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert "re-exec ['-m', 'pipeline.cli']" in result.stdout
    installed = Path(sys.executable).with_name("ich")
    assert installed.exists()
