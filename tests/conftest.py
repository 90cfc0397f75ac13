import os

# The Makefile exports this before pytest starts; set it here too for a bare `pytest` run.
# It must be set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

