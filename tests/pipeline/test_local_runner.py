"""LocalDagRunner logs an input resolution error, skips the component and goes on: the progress handler keeps
those errors (so that run_local fails with them) and tells a resolver that found nothing yet from a failure."""

from __future__ import annotations

import logging

from tfx.orchestration.portable import launcher, resolver_node_handler
from tfx.orchestration.portable.input_resolution import exceptions

from pipeline.local_runner import INPUT_RESOLUTION_ERROR, ComponentProgress


def test_the_format_is_the_one_tfx_logs_with():
    for module in (launcher, resolver_node_handler):
        with open(module.__file__) as f:
            assert f"'{INPUT_RESOLUTION_ERROR}'" in f.read(), module.__name__


def test_input_resolution_errors_are_kept_and_empty_resolvers_are_not_errors():
    lines = []
    progress = ComponentProgress(total=3, echo=lambda line, **_: lines.append(line))
    logger = logging.getLogger("test_local_runner")
    logger.addHandler(progress)
    logger.setLevel(logging.INFO)
    try:
        logger.info("Component %s is running.", "latest_transform_cache_resolver")
        logger.error(INPUT_RESOLUTION_ERROR, "latest_transform_cache_resolver", exceptions.InputResolutionError(
            "Error while resolving inputs: <LatestArtifactStrategy object> returned None."))
        logger.info("Component %s is finished.", "latest_transform_cache_resolver")
        logger.info("Component %s is running.", "Transform")
        logger.error(INPUT_RESOLUTION_ERROR, "Transform", exceptions.InsufficientInputError(
            "InputSpec min_count has not met: inputs[examples] has min_count = 1 but only got 0 artifacts.\nmore"))
        logger.info("Component %s is finished.", "Transform")
    finally:
        logger.removeHandler(progress)
    assert lines[1] == "[ 1/3] latest_transform_cache_resolver found nothing yet"
    assert lines[3] == "[ 2/3] Transform skipped: its inputs could not be resolved"
    assert list(progress.unresolved) == ["Transform"]
    assert progress.unresolved["Transform"].endswith("only got 0 artifacts.")
    assert list(progress.seconds) == ["latest_transform_cache_resolver", "Transform"]
    assert all(seconds >= 0 for seconds in progress.seconds.values())
