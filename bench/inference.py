"""Inference speed on CPU: the exported ensemble against one member's export, at batch 1 and batch 32, in one run.

    .venv/bin/python bench/inference.py [--pipeline-root build/bench/pipeline] [--rounds 3]

Both SavedModels come from the latest run under the pipeline root (the Ensemble component's output and the member
A Trainer export that it was built from) and score the same raw serialized tf.Examples of that run's eval split
through `serving_default`, as `ich predict` and a serving system do. For reference it also times the naive
ensemble: the three member exports called one after another (each parsing and transforming the Examples again).
Rounds alternate between the contenders, and each figure is the median over rounds. Goal: the ensemble costs at
most 3.2x one member.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import latest_ensemble_run, results_path, write_results  # noqa: E402 - after the path is set

GOAL_COST_RATIO = 3.2
BATCHES = (1, 32)


def run_models(pipeline_root: str, pipeline_name: str) -> tuple[str, dict[str, str], str]:
    """The latest Ensemble's SavedModel, the member exports it was built from, and that run's eval split."""
    run = latest_ensemble_run(pipeline_root, pipeline_name)
    return run.ensemble_dir, run.member_dirs, run.eval_split


def timed(call, batches) -> float:
    """Slices per second of `call` over `batches` (lists of serialized Examples)."""
    start = time.perf_counter()
    for batch in batches:
        call(batch)
    return sum(len(b) for b in batches) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-root", default=str(ROOT / "build" / "bench" / "pipeline"))
    parser.add_argument("--pipeline-name", default="ich")
    parser.add_argument("--slices", type=int, default=64, help="slices scored per contender, round and batch size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=results_path("inference"))
    args = parser.parse_args()

    import tensorflow as tf

    from ich_model.serving import PROBABILITIES, SERVING_SIGNATURE

    ensemble_dir, member_dirs, eval_split = run_models(args.pipeline_root, args.pipeline_name)
    files = tf.io.gfile.glob(os.path.join(eval_split, "*.gz"))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP").take(args.slices)]
    if len(records) < args.slices:
        raise SystemExit(f"the eval split holds only {len(records)} slices; pass --slices {len(records)}")
    serve = {name: tf.saved_model.load(path).signatures[SERVING_SIGNATURE] for name, path in member_dirs.items()}
    ensemble = tf.saved_model.load(ensemble_dir).signatures[SERVING_SIGNATURE]
    first = next(iter(member_dirs))

    def call(signature):
        return lambda batch: signature(examples=tf.constant(batch))[PROBABILITIES]

    contenders = {
        f"member {first}": call(serve[first]),
        "ensemble (one graph)": call(ensemble),
        "members called one by one": lambda batch: [call(s)(batch) for s in serve.values()],
    }
    print(f"ensemble {ensemble_dir}\nmember {first} {member_dirs[first]}\n{len(records)} eval slices, "
          f"{args.rounds} rounds, {os.cpu_count()} cores", flush=True)
    rates: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in contenders}
    for batch_size in BATCHES:
        batches = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
        for contender in contenders.values():  # trace each signature at this batch shape before timing
            contender(batches[0])
        for _ in range(args.rounds):
            for name, contender in contenders.items():
                rates[name][batch_size].append(timed(contender, batches))
    median = {name: {b: statistics.median(r) for b, r in by_batch.items()} for name, by_batch in rates.items()}
    member, ensemble_name, naive = list(contenders)
    results = {"cpu_count": os.cpu_count(), "slices": len(records), "rounds": args.rounds,
               "ensemble": ensemble_dir, "member": member_dirs[first],
               "slices_per_s": {name: {str(b): v for b, v in by_batch.items()} for name, by_batch in median.items()},
               "ensemble_cost_vs_member": {str(b): median[member][b] / median[ensemble_name][b] for b in BATCHES},
               "naive_cost_vs_member": {str(b): median[member][b] / median[naive][b] for b in BATCHES},
               "goal_cost_ratio": GOAL_COST_RATIO}
    print(f"\n  {'slices/s':<28}" + "".join(f"{f'batch {b}':>10}" for b in BATCHES))
    for name in contenders:
        print(f"  {name:<28}" + "".join(f"{median[name][b]:10.1f}" for b in BATCHES))
    for b in BATCHES:
        cost = results["ensemble_cost_vs_member"][str(b)]
        verdict = "meets" if cost <= GOAL_COST_RATIO else "misses"
        print(f"  batch {b:>2}: the ensemble costs {cost:.2f}x one member ({verdict} the goal <= {GOAL_COST_RATIO}x); "
              f"three member exports one by one cost {results['naive_cost_vs_member'][str(b)]:.2f}x")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
