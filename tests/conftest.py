import os

# The Makefile exports this before pytest starts; set it here too for a bare `pytest` run.
# It must be set before TensorFlow is first imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def pytest_collection_modifyitems(config, items):
    """The e2e tests first: with `make test`'s two workers, the longest file then runs beside all the others
    instead of after them."""
    items.sort(key=lambda item: item.get_closest_marker("e2e") is None)  # stable: files keep their order
