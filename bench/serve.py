"""`ich serve` under load: 8 senders at once, 5 studies of 32 slices each, against `ich predict` on the same files
in the same run.

    .venv/bin/python bench/serve.py [--model build/bench/pipeline/serving] [--senders 8] [--studies-per-sender 5]

The model is the newest version in the serving folder of bench/pipeline.py's run (the published study model).
The studies are the synthetic generator's at the demo size, written as a scanner writes them (DICOM UIDs). First
`ich predict`'s cost per study: the model loaded once, then each study scored by `predict()` on its files, as a
whole study at a time (the study model's signature reads one study per call). Then `ich serve` in its own
process, with a study timeout of --study-timeout seconds, receives every study from --senders pynetdicom clients
at once (one association per study); the figures come from its results.jsonl and its resident memory (RSS),
sampled every half second. Goal: the service's scoring cost per study at most 1.2x `ich predict`'s, and memory
flat over the run (the last quarter's peak within 10% of the first quarter's, after the first study).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import published_model, results_path, tree_rss, write_results  # noqa: E402 - after the path is set

GOAL_COST_RATIO = 1.2
GOAL_MEMORY_GROWTH = 0.10
SCANNER, NODE = "BENCH", "ICH"


def send_study(files: list[Path], port: int) -> list[int]:
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title=SCANNER)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    association = ae.associate("127.0.0.1", port, ae_title=NODE)
    if not association.is_established:
        raise SystemExit(f"no association with the node on port {port}")
    try:
        return [int(association.send_c_store(path).Status) for path in files]
    finally:
        association.release()


def results_of(spool: Path) -> list[dict]:
    path = spool / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "build" / "bench" / "pipeline" / "serving"))
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "serve")
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--studies-per-sender", type=int, default=5)
    parser.add_argument("--slices", type=int, default=32, help="slices per study")
    parser.add_argument("--size", type=int, default=512, help="slice size in pixels (the demo set's)")
    parser.add_argument("--study-timeout", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=results_path("serve"))
    args = parser.parse_args()

    import shutil

    import psutil
    import tensorflow as tf

    from ich_model.predict import predict
    from ich_model.synth import IMAGES_DIR, generate_dataset
    from ich_model.synth.scanner import as_scanner_writes

    model_dir = published_model(args.model)
    count = args.senders * args.studies_per_sender
    shutil.rmtree(args.work, ignore_errors=True)
    print(f"generating {count} studies of {args.slices} slices at {args.size} px", flush=True)
    generate_dataset(args.work / "rsna", patients=count, slices_per_study=args.slices, seed=2026, size=args.size,
                     positive_fraction=0.5, progress=False)
    # A patient may have two studies: the first `count` of them.
    studies = list(as_scanner_writes(args.work / "rsna" / IMAGES_DIR, args.work / "studies").values())[:count]
    shutil.rmtree(args.work / "rsna")

    print(f"ich predict on each study, model {model_dir}", flush=True)
    loaded = tf.saved_model.load(model_dir)
    predict(studies[0], model_dir, progress=False, loaded=loaded)  # traced once, as the service's first study is
    predict_seconds = []
    for files in studies:
        started = time.perf_counter()
        predict(files, model_dir, progress=False, loaded=loaded)
        predict_seconds.append(time.perf_counter() - started)
    del loaded

    spool = args.work / "spool"
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", "--model", args.model, "--spool", str(spool), "--port", "0",
         "--bind", "127.0.0.1", "--allow", f"{SCANNER}@127.0.0.1", "--study-timeout", str(args.study_timeout)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = None
    for line in process.stdout:
        if "listening on" in line:
            port = int(line.split("listening on 127.0.0.1:")[1].split(";")[0])
            break
    if port is None:
        raise SystemExit("ich serve did not start")
    service = psutil.Process(process.pid)
    threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
    memory: list[tuple[float, float, int]] = []  # (seconds, MB, results so far)
    started = time.monotonic()
    statuses: list[int] = []
    senders = [threading.Thread(target=lambda mine: [statuses.extend(send_study(files, port)) for files in mine],
                                args=(studies[i::args.senders],)) for i in range(args.senders)]
    for sender in senders:
        sender.start()
    while len(results_of(spool)) < count:
        memory.append((time.monotonic() - started, tree_rss(service) / 2**20, len(results_of(spool))))
        if process.poll() is not None:
            raise SystemExit(f"ich serve ended with status {process.returncode}")
        time.sleep(0.5)
    elapsed = time.monotonic() - started
    for sender in senders:
        sender.join()
    process.terminate()
    process.wait(timeout=60)

    results = results_of(spool)
    serve_seconds = [r["scoring_seconds"] for r in results]
    latency = [r["seconds_after_last_instance"] for r in results]
    after_first = [mb for _, mb, done in memory if done >= 1]
    quarter = max(1, len(after_first) // 4)
    growth = max(after_first[-quarter:]) / max(after_first[:quarter]) - 1 if after_first else None
    cost = statistics.median(serve_seconds) / statistics.median(predict_seconds)
    figures = {
        "cpu_count": os.cpu_count(), "model": model_dir, "senders": args.senders, "studies": count,
        "slices_per_study": args.slices, "size": args.size, "study_timeout_s": args.study_timeout,
        "all_stored": statuses == [0] * (count * args.slices), "scored_once": len(results) == count == len(
            {r["study"] for r in results}),
        "studies_per_minute": count / elapsed * 60,
        "predict_s_per_study_median": statistics.median(predict_seconds),
        "serve_scoring_s_per_study_median": statistics.median(serve_seconds),
        "serve_cost_vs_predict": cost, "goal_cost_ratio": GOAL_COST_RATIO,
        "latency_p50_s": percentile(latency, 0.5), "latency_p95_s": percentile(latency, 0.95),
        "rss_mb_first_quarter_peak": max(after_first[:quarter]) if after_first else None,
        "rss_mb_last_quarter_peak": max(after_first[-quarter:]) if after_first else None,
        "rss_growth": growth, "goal_memory_growth": GOAL_MEMORY_GROWTH,
        "rss_mb_samples": [(round(t, 1), round(mb, 1), done) for t, mb, done in memory[::4]],
    }
    print(f"\n  {count} studies x {args.slices} slices ({args.size} px) from {args.senders} senders at once: "
          f"every instance stored: {figures['all_stored']}, every study scored once: {figures['scored_once']}")
    print(f"  {figures['studies_per_minute']:.1f} studies/min; from a study's last instance to its result: p50 "
          f"{figures['latency_p50_s']:.1f} s, p95 {figures['latency_p95_s']:.1f} s (the study timeout is "
          f"{args.study_timeout:g} s)")
    print(f"  scoring cost per study: ich serve {figures['serve_scoring_s_per_study_median']:.2f} s, ich predict "
          f"{figures['predict_s_per_study_median']:.2f} s: {cost:.2f}x ("
          f"{'meets' if cost <= GOAL_COST_RATIO else 'misses'} the goal <= {GOAL_COST_RATIO}x)")
    if growth is not None:
        print(f"  resident memory: {figures['rss_mb_first_quarter_peak']:.0f} MB peak in the first quarter, "
              f"{figures['rss_mb_last_quarter_peak']:.0f} MB in the last: {growth:+.1%} ("
              f"{'meets' if growth <= GOAL_MEMORY_GROWTH else 'misses'} the goal <= {GOAL_MEMORY_GROWTH:.0%})")
    write_results(args.json, figures)


if __name__ == "__main__":
    main()
