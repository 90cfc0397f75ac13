"""How each component grows with the data: `ich run --no-cache` at 1x, 2x, 4x and 8x a base set, fixed steps.

    .venv/bin/python bench/scale.py [--base-patients 24] [--factors 1 2 4 8] [--train-steps 10]

One synthetic set of `8 x base` patients is written once (the demo's settings: 12 slices per study, balanced
subtypes, 512x512); the set of factor k is its first `k x base` patients (their files linked, their label rows
copied). Each factor runs the whole demo pipeline into a fresh pipeline root with the members' steps fixed, and
for every component records its wall time (the run's last_run.json) and the peak resident memory of the run's
process tree while that component ran (sampled every 0.2 s; the direct runner's Beam workers included).

Goals: 8x the data takes at most 8.5x the time of any component, and no component's peak memory grows more than
25% from 1x to 8x. From the per-slice cost between the smallest and the largest factor, the time and storage of
the full RSNA stage-2 training set (752,803 slices) are projected, on this machine and on one 16-core machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import results_path, tree_rss, write_results  # noqa: E402 - after the path is set

RSNA_SLICES = 752_803
# RSNA stage-2 training slices: the share positive per subtype (bench/input.py), for the positive folders' size.
RSNA_SUBTYPE_SHARE_SUM = 0.0042 + 0.048 + 0.035 + 0.047 + 0.063
TIME_GROWTH_GOAL, MEMORY_GROWTH_GOAL = 8.5 / 8, 1.25  # time per unit of data, peak memory, from 1x to 8x
PROGRESS = re.compile(r"^\[\s*\d+/\d+\] (\S+) (\.\.\.|finished|found|skipped)")
SAMPLE_SECONDS = 0.2
TARGET_CORES = 16


def subset(full: Path, out: Path, patients: int) -> int:
    """The first `patients` patients (by ID) of the set at `full`, as a set at `out`; returns its slices."""
    import pydicom

    from ich_model.synth import IMAGES_DIR, LABELS_CSV

    by_patient: dict[str, list[Path]] = {}
    for path in sorted((full / IMAGES_DIR).rglob("*.dcm")):
        by_patient.setdefault(str(pydicom.dcmread(path, stop_before_pixels=True).PatientID), []).append(path)
    chosen = [path for patient in sorted(by_patient)[:patients] for path in by_patient[patient]]
    images = out / IMAGES_DIR
    images.mkdir(parents=True)
    for path in chosen:
        (images / path.name).symlink_to(path)
    kept = {path.stem for path in chosen}
    with open(full / LABELS_CSV, newline="") as source, open(out / LABELS_CSV, "w", newline="") as target:
        reader, writer = csv.reader(source), csv.writer(target, lineterminator="\n")
        writer.writerow(next(reader))
        for row in reader:
            if row[0].rsplit("_", 1)[0] in kept:
                writer.writerow(row)
    return len(chosen)


def run_measured(command: list[str], log: Path) -> dict[str, int]:
    """Run `command`, echoing and logging its output; the peak tree RSS per component, from its progress lines."""
    import psutil

    with open(log, "w") as out:
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        process = psutil.Process(child.pid)
        current: list[str | None] = [None]
        peaks: dict[str, int] = {}

        def sample():
            while child.poll() is None:
                node = current[0]
                if node is not None:
                    peaks[node] = max(peaks.get(node, 0), tree_rss(process))
                time.sleep(SAMPLE_SECONDS)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for line in child.stdout:
            out.write(line)
            match = PROGRESS.match(line)
            if match:
                print(line.rstrip(), flush=True)
                current[0] = match.group(1) if match.group(2) == "..." else None
        child.wait()
        sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit status {child.returncode}; its output is in {log}")
    return peaks


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-patients", type=int, default=24)
    parser.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--train-steps", type=int, default=10, help="steps per member, the same at every factor")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "scale")
    parser.add_argument("--json", type=Path, default=results_path("scale"))
    args = parser.parse_args()

    from ich_model.synth import generate_dataset
    from pipeline.configs import SynthSettings

    settings = SynthSettings()
    factors = sorted(args.factors)
    full = args.work / f"data-{factors[-1]}x-full"
    if not full.exists():
        print(f"writing {factors[-1] * args.base_patients} patients to {full}", flush=True)
        generate_dataset(full, patients=factors[-1] * args.base_patients, slices_per_study=settings.slices_per_study,
                         seed=settings.seed, positive_fraction=settings.positive_fraction,
                         subtype_mix=settings.subtype_mix)
    ich = Path(sys.executable).with_name("ich")
    rows = {}
    for factor in factors:
        data, root = args.work / f"data-{factor}x", args.work / f"pipeline-{factor}x"
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        slices = subset(full, data, factor * args.base_patients)
        command = [str(ich), "run", "--data", str(data), "--pipeline-root", str(root), "--no-cache",
                   "--train-steps", str(args.train_steps)]
        print(f"\n{factor}x: {slices} slices; {' '.join(command)}", flush=True)
        peaks = run_measured(command, args.work / f"run-{factor}x.log")
        run = json.loads((root / "last_run.json").read_text())
        examples = root / "DicomExampleGen"
        positives = sum(folder_bytes(folder) for folder in examples.rglob("Positives-*"))
        rows[factor] = {"slices": slices, "wall_time_s": run["wall_time_s"], "seconds": run["component_seconds"],
                        "peak_rss_mb": {node: peak / 2**20 for node, peak in peaks.items()},
                        "examples_bytes": folder_bytes(examples), "positives_bytes": positives}

    low, high = rows[factors[0]], rows[factors[-1]]
    data_ratio = high["slices"] / low["slices"]
    results = {"cpu_count": os.cpu_count(), "base_patients": args.base_patients, "train_steps": args.train_steps,
               "factors": {str(k): v for k, v in rows.items()}, "components": {}}
    print(f"\n{factors[-1]}x against {factors[0]}x: {data_ratio:.2f}x the slices ({low['slices']} -> "
          f"{high['slices']})")
    print(f"{'component':<32} {'time 1x':>8} {'time 8x':>8} {'ratio':>6} {'peak MB 1x':>11} {'peak MB 8x':>11} "
          f"{'growth':>7}   per slice   RSNA here  RSNA 16 cores")
    time_ok = memory_ok = True
    for node, seconds in high["seconds"].items():
        before = low["seconds"].get(node)
        if before is None or seconds < 0.5 and before < 0.5:
            continue  # resolvers and instant components: no time to scale
        ratio = seconds / max(before, 0.1)
        peak_low, peak_high = low["peak_rss_mb"].get(node, 0.0), high["peak_rss_mb"].get(node, 0.0)
        growth = peak_high / peak_low if peak_low else float("nan")
        per_slice = max(0.0, (seconds - before) / (high["slices"] - low["slices"]))
        here = before + per_slice * (RSNA_SLICES - low["slices"])
        # The data-proportional part spreads over 8 times the cores; the fixed part does not.
        sixteen = before + per_slice * (RSNA_SLICES - low["slices"]) * (os.cpu_count() or 2) / TARGET_CORES
        time_ok &= ratio <= TIME_GROWTH_GOAL * data_ratio
        memory_ok &= not growth > MEMORY_GROWTH_GOAL
        results["components"][node] = {"time_ratio": ratio, "peak_memory_growth": growth,
                                       "seconds_per_slice": per_slice, "rsna_hours_here": here / 3600,
                                       "rsna_hours_16_cores": sixteen / 3600}
        print(f"{node:<32} {before:8.1f} {seconds:8.1f} {ratio:6.2f} {peak_low:11.0f} {peak_high:11.0f} "
              f"{growth:7.2f}   {per_slice * 1000:7.1f} ms {here / 3600:9.1f} h {sixteen / 3600:11.1f} h")
    per_slice_bytes = (high["examples_bytes"] - low["examples_bytes"]) / (high["slices"] - low["slices"])
    positives_share = high["positives_bytes"] / max(1, high["examples_bytes"] - high["positives_bytes"])
    results.update(time_goal_met=time_ok, memory_goal_met=memory_ok, examples_bytes_per_slice=per_slice_bytes,
                   positives_share_of_split_bytes=positives_share,
                   rsna_examples_gb=per_slice_bytes / (1 + positives_share) * (1 + RSNA_SUBTYPE_SHARE_SUM)
                   * RSNA_SLICES / 1e9)
    print(f"time: at most {TIME_GROWTH_GOAL * data_ratio:.2f}x for {data_ratio:.2f}x the data: "
          f"{'met' if time_ok else 'missed'}; peak memory growth at most {MEMORY_GROWTH_GOAL:.2f}x: "
          f"{'met' if memory_ok else 'missed'}")
    print(f"Examples: {per_slice_bytes / 1e3:.0f} kB per slice (positive folders {positives_share:.0%} of the "
          f"splits at this mix); the RSNA set: {results['rsna_examples_gb']:.0f} GB with its positive folders "
          f"({RSNA_SUBTYPE_SHARE_SUM:.1%} of the splits at its prevalence)")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
