"""What every benchmark shares: where its JSON goes and how it is written, and the run that the inference and
quality benchmarks read (bench/pipeline.py's demo run)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MEASURED_AT = "measured_at"  # UTC, "YYYY-MM-DD HH:MM": a file's own time is lost when it is cloned or copied


def results_path(name: str) -> Path:
    """bench/results/<name>.json, the default --json of benchmark `name`."""
    return RESULTS_DIR / f"{name}.json"


def write_results(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = {**results, MEASURED_AT: f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}"}
    path.write_text(json.dumps(stamped, indent=2) + "\n")
    print(f"results: {path}")


def published_model(serving_dir: str) -> str:
    """The newest complete version in the serving folder that bench/pipeline.py's run published to; exits saying
    what to run when there is none."""
    from ich_model.serving_folder import newest_model_dir

    try:
        return newest_model_dir(serving_dir)
    except ValueError as error:
        raise SystemExit(f"{error}\nrun bench/pipeline.py first (it publishes the model), or pass --model") from None


def tree_rss(process) -> int:
    """Resident bytes of a process (a psutil.Process) and all its descendants (0 for those that ended meanwhile)."""
    import psutil

    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += member.memory_info().rss
    return total


def with_sd(row: dict, key: str, digits: int) -> str:
    """row[key], with its standard deviation over seeds (row[key + "_sd"]) when it was measured over several."""
    sd = row.get(f"{key}_sd")
    return f"{row[key]:.{digits}f}" + ("" if sd is None else f" ±{sd:.{digits}f}")


@dataclass
class EnsembleRun:
    """The latest Ensemble execution under a pipeline root and what its run wrote."""

    store: Any  # the metadata store, read-only
    ensemble: Any  # the Ensemble's MLMD execution
    run: int  # its pipeline run's context id
    ensemble_dir: str  # the ensemble's SavedModel
    member_dirs: dict[str, str]  # member name -> the member export the ensemble was built from
    eval_split: str  # the folder of that run's eval split Examples


def latest_ensemble_run(pipeline_root: str, pipeline_name: str) -> EnsembleRun:
    from tfx.utils import path_utils

    from pipeline.configs import metadata_path
    from pipeline.evaluation import EVAL_SPLIT
    from pipeline.summary import (
        EXAMPLE_GEN,
        execution_artifacts,
        latest_execution,
        open_store,
        output_artifact,
        run_context_id,
    )

    store = open_store(metadata_path(pipeline_root))
    ensemble = latest_execution(store, pipeline_name, "Ensemble")
    run = run_context_id(store, ensemble)
    inputs, outputs = execution_artifacts(store, ensemble)
    members = {key.removeprefix("model_"): path_utils.serving_model_path(artifacts[0].uri)
               for key, artifacts in sorted(inputs.items()) if key.startswith("model_")}
    examples = output_artifact(store, pipeline_name, EXAMPLE_GEN, "examples", run)
    return EnsembleRun(store, ensemble, run, path_utils.serving_model_path(outputs["model"][0].uri), members,
                       os.path.join(examples.uri, f"Split-{EVAL_SPLIT}"))  # TFX's split folder
