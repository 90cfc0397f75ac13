"""`make bench`: every benchmark in order, then bench/RESULTS.md (date, machine, figures, goals) from their JSON.

    .venv/bin/python bench/run_all.py [--only NAME ...] [--summary-only]

A benchmark that fails is reported in RESULTS.md with its exit status, and the others still run. Each benchmark's
own figures are in bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import MEASURED_AT, results_path, with_sd  # noqa: E402 - after the path is set

# In this order: pipeline runs `ich run` on the demo set, whose artifacts input, inference and quality then use, and
# whose published model serve sends studies to and study scores held-out studies with.
BENCHMARKS = ("ingest", "transform", "train", "pipeline", "input", "scale", "inference", "quality", "serve",
              "study", "study_lengths", "context_split", "acquisition_ood")


def _goal(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**missed**")


def _ingest(r: dict) -> list[str]:
    overhead = r["executor_overhead_vs_same_work"]
    fastest = f" (fastest of {r['repeats']} runs each)" if r.get("repeats", 1) > 1 else ""
    return [f"| ingest | Beam overhead, 1 worker, vs the same work in a plain loop{fastest} | "
            f"{overhead:+.0%} | <= +30% | {_goal(overhead <= 0.3)} |",
            f"| ingest | 2 workers vs the plain loop{fastest} | {r['two_workers_vs_same_work']:.2f}x | >= 1.6x | "
            f"{_goal(r['two_workers_vs_same_work'] >= 1.6)} |",
            f"| ingest | peak memory growth on a set {r['scale']}x larger | {r['peak_rss_growth']:+.0%} | < +20% | "
            f"{_goal(r['peak_rss_growth'] < 0.2)} |"]


def _transform(r: dict) -> list[str]:
    return [f"| transform | transform graph vs the numpy reference | {r['graph_vs_numpy']:.2f}x | | |"]


def _train(r: dict) -> list[str]:
    tiny = r["networks"]["cascade tiny"]["train_images_per_s"]
    rows = [f"| train | tiny cascade training | {tiny:.1f} img/s | >= 15 img/s | {_goal(tiny >= 15)} |"]
    precision = r.get("tiny_precision", {})
    for name in ("mixed_bfloat16", "float32 + XLA"):
        if name in precision:
            rows.append(f"| train | tiny cascade, {name} vs float32, batch 32 | "
                        f"{precision[name]['vs_float32']:.2f}x | | |")
    return rows


def _pipeline(r: dict) -> list[str]:
    top = sorted(r["component_seconds"].items(), key=lambda item: -item[1])[:4]
    where = ", ".join(f"{node} {seconds:.0f} s" for node, seconds in top)
    return [f"| pipeline | `ich run` on the demo set ({r['train_steps']} steps per member) | "
            f"{r['wall_time_s'] / 60:.1f} min | | (largest: {where}) |"]


def _input(r: dict) -> list[str]:
    rows = []
    for set_name, entry in r["sets"].items():
        a = entry["members"]["a"]
        rows.append(f"| input | {set_name}: member A's batches, positive folders, images/s on 1; 2 cores (floor: "
                    f"parse only, 1 core) | {a['images_per_s_1_cores']:.0f}; {a['images_per_s_2_cores']:.0f} "
                    f"({entry['floor_images_per_s_1_cores']:.0f}) | >= {r['rate_per_core_goal']:.0f} per core | "
                    f"{_goal(a['images_per_s_1_cores'] >= r['rate_per_core_goal'])} |")
        before = entry.get("filter", {}).get("raw_reads_per_image")
        before = (f"{before:.2f} measured" if before is not None else
                  f"{entry['filter_reads_per_image_computed']:.1f} computed")
        worst = max(row["raw_reads_per_image"] for row in entry["members"].values())
        rows.append(f"| input | {set_name}: raw Examples read per training image, positive folders (filtering the "
                    f"split, before) | {worst:.2f} ({before}) | <= {r['reads_goal']} | "
                    f"{_goal(worst <= r['reads_goal'])} |")
    return rows


def _scale(r: dict) -> list[str]:
    factors = sorted(r["factors"], key=int)
    worst_time = max(r["components"].items(), key=lambda item: item[1]["time_ratio"])
    worst_memory = max(r["components"].items(), key=lambda item: item[1]["peak_memory_growth"])
    return [f"| scale | largest time ratio, {factors[-1]}x vs {factors[0]}x the data ({worst_time[0]}) | "
            f"{worst_time[1]['time_ratio']:.2f}x | <= {8.5 * int(factors[-1]) / 8 / int(factors[0]):.2f}x | "
            f"{_goal(r['time_goal_met'])} |",
            f"| scale | largest peak memory growth, {factors[-1]}x vs {factors[0]}x ({worst_memory[0]}) | "
            f"{worst_memory[1]['peak_memory_growth']:.2f}x | <= 1.25x | {_goal(r['memory_goal_met'])} |"]


def _inference(r: dict) -> list[str]:
    return [f"| inference | ensemble cost vs one member, batch {b} | {cost:.2f}x | <= {r['goal_cost_ratio']}x | "
            f"{_goal(cost <= r['goal_cost_ratio'])} |" for b, cost in r["ensemble_cost_vs_member"].items()]


def _serve(r: dict) -> list[str]:
    load = f"{r['senders']} senders x {r['studies'] // r['senders']} studies x {r['slices_per_study']} slices"
    lines = [f"| serve | {load}: every instance stored, every study scored once | "
             f"{r['all_stored'] and r['scored_once']} | yes | {_goal(r['all_stored'] and r['scored_once'])} |",
             f"| serve | studies per minute; last instance to result p50 / p95 (timeout {r['study_timeout_s']:g} s) | "
             f"{r['studies_per_minute']:.1f}; {r['latency_p50_s']:.1f} s / {r['latency_p95_s']:.1f} s | | |",
             f"| serve | scoring cost per study vs ich predict's | {r['serve_cost_vs_predict']:.2f}x | "
             f"<= {r['goal_cost_ratio']}x | {_goal(r['serve_cost_vs_predict'] <= r['goal_cost_ratio'])} |"]
    if r["rss_growth"] is not None:
        lines.append(f"| serve | resident memory, last quarter's peak vs first quarter's | {r['rss_growth']:+.1%} | "
                     f"<= {r['goal_memory_growth']:.0%} | {_goal(r['rss_growth'] <= r['goal_memory_growth'])} |")
    return lines


def _study(r: dict) -> list[str]:
    where = f"{r['studies']} held-out studies of {r['slices_per_study']} slices ({r['slices']} slices)"
    refined, alone = r["per_slice"]["refined"], r["per_slice"]["slice_only"]
    head, maximum = r["per_study"]["study_head"]["any"], r["per_study"]["slice_maximum"]["any"]
    lower = ", ".join(r["labels_lower_per_slice"]) or "none"
    lines = [f"| study | {where}: study model vs slice ensemble per slice, weighted log loss (labels with a lower "
             f"AUC) | {refined['weighted_log_loss']:.4f} vs {alone['weighted_log_loss']:.4f}: "
             f"{r['slice_loss_ratio']:.2f}x ({lower}) | <= {r['slice_loss_ratio_goal']}x, none lower | "
             f"{_goal(r['slice_goal_met'])} |",
             f"| study | same: macro AUC per slice, study model vs slice ensemble | {refined['macro_auc']:.3f} vs "
             f"{alone['macro_auc']:.3f} | | |"]
    if head["auc"] is not None:
        lines.append(f"| study | same: `any` AUC per study, study head vs slice maximum (bootstrap 95% intervals) | "
                     f"{head['auc']:.3f} [{head['interval'][0]:.3f}, {head['interval'][1]:.3f}] vs "
                     f"{maximum['auc']:.3f} [{maximum['interval'][0]:.3f}, {maximum['interval'][1]:.3f}] | "
                     f">= {r['study_any_auc_goal']} | {_goal(r['study_goal_met'])} |")
    for level, points in (r.get("operating_points") or {}).items():
        point = points["any"]
        lines.append(f"| study | same: the model's {level} operating point for `any` (target sensitivity "
                     f"{point['target']:g} on its eval split): sensitivity; specificity here | "
                     f"{point['sensitivity']:.3f}; {point['specificity']:.3f} | | |")
    return lines


def _context_split(r: dict) -> list[str]:
    lines = []
    for name, option in r["options"].items():
        refined, alone = option["per_slice"]["refined"], option["per_slice"]["slice_ensemble"]
        head = option["per_study"]["study head"]
        learns = ("the members' own train split" if not option["context_share"] else
                  f"a context split of {option['context_share']:.0%} of the patients, held out from the members")
        lines.append(f"| context_split | {name}: the context stage learns from {learns}; on the eval split, per slice "
                     f"wLogLoss (ratio to its own ensemble); study `any` AUC | {refined['weighted_log_loss']:.4f} "
                     f"({option['slice_loss_ratio']:.2f}x, ensemble {alone['weighted_log_loss']:.4f}); "
                     f"{head['any']:.3f} | lower is better | {'kept' if name == r['better'] else ''} |")
        long = option.get("long_studies")
        if long:
            lines.append(f"| context_split | {name}, on {long['studies']} held-out studies of 24-40 slices: per slice "
                         f"wLogLoss (ratio); study `any` AUC | {long['refined_weighted_log_loss']:.4f} "
                         f"({long['slice_loss_ratio']:.2f}x); {long['study_head_any_auc']['auc']:.3f} | | |")
    return lines


def _study_lengths(r: dict) -> list[str]:
    lines = []
    for name, training in r["trainings"].items():
        for where, row in training["mean"].items():
            met = (row["slice_loss_ratio"] <= r["slice_loss_ratio_goal"]
                   and row["study_any_auc_head"] >= r["study_any_auc_goal"])
            lines.append(f"| study_lengths | context model trained on {name}, scored on {where} (mean of "
                         f"{len(r['seeds'])} seeds): per slice wLogLoss vs the ensemble's; study `any` AUC, head "
                         f"(slice maximum) | {row['slice_loss_ratio']:.2f}x; {row['study_any_auc_head']:.3f} "
                         f"({row['study_any_auc_slice_maximum']:.3f}) | <= {r['slice_loss_ratio_goal']}x; >= "
                         f"{r['study_any_auc_goal']} | {_goal(met)} |")
    return lines


def _acquisition_ood(r: dict) -> list[str]:
    return [f"| acquisition_ood | probe, not shipped: Mahalanobis over 7 acquisition statistics of the HU image "
            f"(fitted on {r['reference_slices']} training slices), AUROC shifted vs held-out slices (without the noise "
            f"measure); shifted slices flagged at 5% of held-out | {r['mahalanobis_auroc']:.3f} "
            f"({r['mahalanobis_auroc_without_noise']:.3f}); {r['shifted_flagged_at_5_percent_of_held_out']:.1%} | "
            f">= 0.95 (issue 22, for the shipped score) | |"]


def _macro_and_loss(row: dict) -> str:
    return f"{with_sd(row, 'macro_auc', 3)} / {with_sd(row, 'weighted_log_loss', 4)}"


def _quality(r: dict) -> list[str]:
    members = r["ensemble_vs_members"]
    best = max((m for m in members if m != "ensemble"), key=lambda m: members[m]["macro_auc"])
    spread = r["spread_flags_errors_auroc"]
    lines = []
    if "ablation" in r:
        ablation = r["ablation"]
        seeds = r.get("ablation_seeds", 1)
        rivals = ", ".join(f"{name} {_macro_and_loss(row)}" for name, row in ablation.items() if name != "cascade")
        lines.append(f"| quality | cascade macro AUC / wLogLoss vs single-family networks, mean ± sd over {seeds} "
                     f"seeds | {_macro_and_loss(ablation['cascade'])} ({rivals}) | at least as good as the better | "
                     f"{_goal(r['cascade_goal_met'])} |")
    else:
        lines.append("| quality | cascade vs single-family networks | not measured in this run | | |")
    lines += [f"| quality | ensemble macro AUC / wLogLoss vs its best member ({best}) | "
              f"{members['ensemble']['macro_auc']:.3f} / {members['ensemble']['weighted_log_loss']:.4f} vs "
              f"{members[best]['macro_auc']:.3f} / {members[best]['weighted_log_loss']:.4f} | at least as good | "
              f"{_goal(r['ensemble_goal_met'])} |",
              f"| quality | AUROC of the spread for wrong `any` calls ({r['wrong_any_calls']} wrong) | "
              f"{'n/a' if spread is None else f'{spread:.3f}'} | | |"]
    if "shifted_models" in r:
        shifted = r["shifted_models"]["ensemble"]
        worst = max(shifted["calibration_gap"].items(), key=lambda item: abs(item[1]))
        lines.append(f"| quality | shifted set: ensemble macro AUC; largest gap of mean probability to positive share "
                     f"| {shifted['macro_auc']:.3f}; {worst[0]} {worst[1]:+.3f} | >= 0.90; within 0.05 | "
                     f"{_goal(r['shifted_goal_met'])} |")
    intensity = r.get("scanner_intensity_ablation")
    if intensity:
        seeds = len(intensity["on"]["held_out"]["per_seed"])
        on, off = ("; ".join(f"{intensity[k][s]['macro_auc']:.3f}" for s in ("held_out", "shifted"))
                   for k in ("on", "off"))
        lines.append(f"| quality | member A's recipe with vs without the scanner intensity jitter, macro AUC held-out; "
                     f"shifted (mean of {seeds} seeds) | {on} vs {off} | | |")
    ood = r.get("out_of_distribution", {}).get("auroc", {}).get("ood_score (shipped)")
    if ood is not None:
        lines.append(f"| quality | OOD AUROC vs in-distribution: shifted; not head CT (pooled) | "
                     f"{ood['shifted']:.3f}; {ood['not_head_ct (pooled)']:.3f} | >= 0.95 | "
                     f"{_goal(r['ood_goal_met'])} |")
    return lines


SUMMARIES = {"ingest": _ingest, "transform": _transform, "train": _train, "pipeline": _pipeline,
             "input": _input, "scale": _scale, "inference": _inference, "quality": _quality,
             "serve": _serve, "study": _study, "study_lengths": _study_lengths,
             "context_split": _context_split, "acquisition_ood": _acquisition_ood}


def _auc_table(r: dict) -> list[str]:
    order = ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
    heads = ("any", "EDH", "IPH", "IVH", "SAH", "SDH")
    seeds = r.get("ablation_seeds", 1)
    lines = ["| model | " + " | ".join(heads) + " | macro AUC | wLogLoss |", "|---" * (len(heads) + 3) + "|"]
    rows = {**r["ensemble_vs_members"],
            **{f"{name} (mean of {seeds} seeds)": row for name, row in r.get("ablation", {}).items()},
            **{f"shifted set: {name}": row for name, row in r.get("shifted_models", {}).items()}}
    for name, row in rows.items():
        aucs = " | ".join("n/a" if row["auc"][label] is None else f"{row['auc'][label]:.3f}" for label in order)
        lines.append(f"| {name} | {aucs} | {with_sd(row, 'macro_auc', 3)} | "
                     f"{with_sd(row, 'weighted_log_loss', 4)} |")
    lines += ["", "| label | ECE as exported | ECE after Platt scaling on the eval split |", "|---|---|---|"]
    lines += [f"| {label} | {v['exported']:.3f} | {v['platt_on_eval_split']:.3f} |"
              for label, v in r["calibration_ece"].items()]
    return lines


def _ood_table(r: dict) -> list[str]:
    """AUROC of each measure per set against the in-distribution held-out slices, the shipped flag's share per set
    and the wrong `any` calls it catches."""
    ood = r["out_of_distribution"]
    sets = list(next(iter(ood["auroc"].values())))
    lines = ["| score | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(f"{row[s]:.3f}" for s in sets) + " |" for name, row in ood["auroc"].items()]
    shares = ood["flagged_share"]
    lines += ["", "| flagged by the shipped threshold | " + " | ".join(shares) + " |", "|---" * (len(shares) + 1) + "|",
              "| share of slices | " + " | ".join(f"{v:.1%}" for v in shares.values()) + " |"]
    caught = ood["wrong_any_calls_flagged"]
    lines += ["", "Wrong `any` calls flagged: " + "; ".join(
        f"{name} {v['flagged']} of {v['wrong_any_calls']} ({v['flagged'] / v['wrong_any_calls']:.1%})"
        for name, v in caught.items() if v["wrong_any_calls"]) + "."]
    return lines


def _scale_table(r: dict) -> list[str]:
    factors = sorted(r["factors"], key=int)
    low, high = r["factors"][factors[0]], r["factors"][factors[-1]]
    lines = [f"`ich run --no-cache`, {r['train_steps']} steps per member, {low['slices']} to {high['slices']} slices "
             f"({factors[0]}x to {factors[-1]}x). RSNA projections (752,803 slices) from the per-slice cost between "
             f"the two; on 16 cores the per-slice part is taken to spread over 8 times this machine's cores.", "",
             f"| component | s at {factors[0]}x | s at {factors[-1]}x | time ratio | peak MB at {factors[0]}x | "
             f"peak MB at {factors[-1]}x | ms per slice | RSNA h here | RSNA h, 16 cores |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for node, row in r["components"].items():
        lines.append(f"| {node} | {low['seconds'][node]:.0f} | {high['seconds'][node]:.0f} | {row['time_ratio']:.2f} | "
                     f"{low['peak_rss_mb'].get(node, 0):.0f} | {high['peak_rss_mb'].get(node, 0):.0f} | "
                     f"{row['seconds_per_slice'] * 1000:.0f} | {row['rsna_hours_here']:.1f} | "
                     f"{row['rsna_hours_16_cores']:.1f} |")
    lines += ["", f"Examples: {r['examples_bytes_per_slice'] / 1e3:.0f} kB per slice; the RSNA set about "
                  f"{r['rsna_examples_gb']:.0f} GB with its positive folders."]
    return lines


def write_results(statuses: dict[str, str]) -> Path:
    import tensorflow as tf

    lines = ["# Benchmark results", "",
             f"Written by `make bench` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC "
             "(each benchmark's own time is under the table).", "",
             f"Machine: {os.cpu_count()} cores, {platform.machine()}, {platform.platform()}; Python "
             f"{platform.python_version()}, TensorFlow {tf.__version__}; CPU only.", "",
             "Ratios compare contenders measured in the same run; absolute rates vary with the machine's load.", "",
             "| benchmark | what | figure | goal | |", "|---|---|---|---|---|"]
    results = {}
    for name in BENCHMARKS:
        path = results_path(name)
        if statuses.get(name, "ok") != "ok" or not path.exists():
            lines.append(f"| {name} | | not measured: {statuses.get(name, 'no results file')} | | |")
            continue
        results[name] = json.loads(path.read_text())
        lines += SUMMARIES[name](results[name])
    measured = ", ".join(f"{name} {figures.get(MEASURED_AT, 'time not recorded')}" for name, figures in results.items())
    lines += ["", f"Measured (UTC): {measured}."]
    if "quality" in results:
        held_out = results["quality"]["held_out"]
        lines += ["", f"## Per-label AUC on held-out synthetic data ({held_out['slices']} slices of "
                      f"{held_out['patients']} patients, seed {held_out['seed']})", ""]
        lines += _auc_table(results["quality"])
        if "out_of_distribution" in results["quality"]:
            lines += ["", "## Out of distribution: AUROC against the in-distribution held-out slices", ""]
            lines += _ood_table(results["quality"])
    if "pipeline" in results:
        lines += ["", "## Where `ich run` spends its time", "", "| component | seconds | share |", "|---|---|---|"]
        lines += [f"| {node} | {seconds:.0f} | {results['pipeline']['share_of_wall_time'][node]:.0%} |"
                  for node, seconds in sorted(results["pipeline"]["component_seconds"].items(),
                                              key=lambda item: -item[1])]
    if "scale" in results:
        lines += ["", "## How each component grows with the data, and the full RSNA set projected", ""]
        lines += _scale_table(results["scale"])
    lines += ["", "Each benchmark's JSON in `bench/results/` holds every figure it measured."]
    out = ROOT / "bench" / "RESULTS.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these (RESULTS.md keeps the rest)")
    parser.add_argument("--summary-only", action="store_true", help="rewrite RESULTS.md from the JSON files")
    args = parser.parse_args()
    statuses = {}
    if not args.summary_only:
        for name in args.only or BENCHMARKS:
            print(f"\n=== bench/{name}.py", flush=True)
            started = time.monotonic()
            code = subprocess.call([sys.executable, str(ROOT / "bench" / f"{name}.py")])
            statuses[name] = "ok" if code == 0 else f"exit status {code}"
            print(f"=== bench/{name}.py: {statuses[name]} in {(time.monotonic() - started) / 60:.1f} min", flush=True)
    print(f"wrote {write_results(statuses)}")


if __name__ == "__main__":
    main()
