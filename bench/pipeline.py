"""Where a whole pipeline run's time goes: `ich run` on the demo set, per component.

    .venv/bin/python bench/pipeline.py [--pipeline-root build/bench/pipeline] [--data data/demo]

Runs `ich run --no-cache` (the demo preset) into a fresh pipeline root, so that every component executes, and
reads each component's wall time from the run's last_run.json. The run's artifacts stay there for the inference
and quality benchmarks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import results_path, write_results  # noqa: E402 - after the path is set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-root", type=Path, default=ROOT / "build" / "bench" / "pipeline")
    parser.add_argument("--data", default=str(ROOT / "data" / "demo"))
    parser.add_argument("--json", type=Path, default=results_path("pipeline"))
    args = parser.parse_args()

    shutil.rmtree(args.pipeline_root, ignore_errors=True)
    ich = Path(sys.executable).with_name("ich")
    command = [str(ich), "run", "--data", args.data, "--pipeline-root", str(args.pipeline_root), "--no-cache"]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    run = json.loads((args.pipeline_root / "last_run.json").read_text())
    seconds = run["component_seconds"]
    total = run["wall_time_s"]
    results = {"cpu_count": os.cpu_count(), "preset": run["config"]["preset"], "data": args.data,
               "train_steps": run["config"]["train_steps"], "wall_time_s": total, "component_seconds": seconds,
               "share_of_wall_time": {node: s / total for node, s in seconds.items()},
               "outside_components_s": total - sum(seconds.values())}
    print(f"\n`ich run` on {args.data}: {total / 60:.1f} min on {os.cpu_count()} cores")
    for node, s in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"  {node:<34} {s:7.1f} s  {s / total:6.1%}")
    print(f"  {'(start-up, resolvers, summary)':<34} {results['outside_components_s']:7.1f} s  "
          f"{results['outside_components_s'] / total:6.1%}")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
