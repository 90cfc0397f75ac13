"""Which embeddings the study-context stage should learn from: the members' own train split (in-fold) or a context
split of training patients held out from the members (out-of-fold), measured on patients that neither stage saw.

    .venv/bin/python bench/context_split.py [--data data/demo] [--context-share 0.2] [--skip-long-studies]

Runs `ich run --no-cache` (the demo preset) twice on the same data, into a pipeline root per option:

- in-fold: `context_share=0`, the members and the context stage learn from the same train split (80% of patients);
- held-out: `context_share=0.2`, the members learn from 60% of the patients and the context stage from another 20%
  that the members never saw.

The eval split (the last 20% of the hash buckets) holds the same patients in both, and neither stage of either run
saw them. From each run's last_run.json (TFMA's figures on that split): per slice, the study model's refined output
against its own slice ensemble (weighted log loss ratio, labels with a lower AUC, macro AUC) and in absolute terms;
per study, the head's AUCs. Unless --skip-long-studies, bench/study.py also scores each run's published model on its
held-out studies of RSNA-like length. The better option is the one whose refined output has the lower weighted log
loss per slice on the eval split.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import results_path, write_results  # noqa: E402 - after the path is set

OPTIONS = ("in_fold", "held_out")
STUDY_HEAD = "study head"


def run_option(name: str, context_share: float, data: str, root: Path, reuse: bool) -> dict:
    """`ich run --no-cache` with this context share into a fresh `root` (with `reuse`, a run already there with
    this share is kept); the figures of its last_run.json."""
    summary = root / "last_run.json"
    if not (reuse and summary.exists()
            and json.loads(summary.read_text())["config"]["context_share"] == context_share):
        shutil.rmtree(root, ignore_errors=True)
        ich = Path(sys.executable).with_name("ich")
        command = [str(ich), "run", "--data", data, "--pipeline-root", str(root), "--no-cache",
                   "--set", f"context_share={context_share}"]
        print(f"\n[{name}] " + " ".join(command), flush=True)
        subprocess.run(command, check=True)
    run = json.loads(summary.read_text())
    ensemble, refined = run["metrics"]["ensemble"], run["metrics"]["context"]
    labels = [label for label in refined if label not in ("macro_auc", "undefined_auc", "weighted_log_loss")]
    return {
        "context_share": context_share,
        "wall_time_s": run["wall_time_s"],
        "component_seconds": run["component_seconds"],
        "per_slice": {"refined": refined, "slice_ensemble": ensemble},
        "slice_loss_ratio": refined["weighted_log_loss"] / ensemble["weighted_log_loss"],
        "labels_lower_per_slice": [label for label in labels if refined[label] is not None
                                   and ensemble[label] is not None and refined[label] < ensemble[label]],
        "per_study": run["study"],
        "blessed": run["blessed"],
        # The run's study model, whether or not the StudyEvaluator blessed it (a fresh root holds one).
        "study_model": sorted(glob.glob(str(root / "context_trainer" / "model" / "*" / "Format-Serving")))[-1],
    }


def long_studies(name: str, study_model: str, out: Path) -> dict:
    """bench/study.py's figures for the run's study model (its held-out studies are generated once)."""
    command = [sys.executable, str(ROOT / "bench" / "study.py"), "--model", study_model, "--json", str(out)]
    print(f"\n[{name}] " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    study = json.loads(out.read_text())
    return {"slice_loss_ratio": study["slice_loss_ratio"],
            "refined_weighted_log_loss": study["per_slice"]["refined"]["weighted_log_loss"],
            "labels_lower_per_slice": study["labels_lower_per_slice"],
            "macro_auc": study["per_slice"]["refined"]["macro_auc"],
            "study_head_any_auc": study["per_study"]["study_head"]["any"],
            "studies": study["studies"], "slices": study["slices"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT / "data" / "demo"))
    parser.add_argument("--context-share", type=float, default=0.2)
    parser.add_argument("--roots", type=Path, default=ROOT / "build" / "bench" / "context-split")
    parser.add_argument("--skip-long-studies", action="store_true",
                        help="do not score each run's model on bench/study.py's held-out studies of 24-40 slices")
    parser.add_argument("--reuse", action="store_true",
                        help="keep an option's run already in its root (same context share) instead of running again")
    parser.add_argument("--json", type=Path, default=results_path("context_split"))
    args = parser.parse_args()

    results = {"data": args.data, "options": {}}
    # The held-out run first: it is the one that exercises the context split.
    for name, share in (("held_out", args.context_share), ("in_fold", 0.0)):
        results["options"][name] = run_option(name, share, args.data, args.roots / name, args.reuse)
        if not args.skip_long_studies:
            results["options"][name]["long_studies"] = long_studies(
                name, results["options"][name]["study_model"], args.roots / f"{name}-long-studies.json")

    options = results["options"]
    better = min(OPTIONS, key=lambda name: options[name]["per_slice"]["refined"]["weighted_log_loss"])
    results["better"] = better
    print(f"\nthe context stage's training data, on the same eval split ({args.data}):")
    for name in OPTIONS:
        option, head = options[name], options[name]["per_study"][STUDY_HEAD]
        refined, alone = option["per_slice"]["refined"], option["per_slice"]["slice_ensemble"]
        print(f"  {name:<9} context share {option['context_share']:.2f}: per slice wLogLoss "
              f"{refined['weighted_log_loss']:.4f} (its ensemble {alone['weighted_log_loss']:.4f}, "
              f"{option['slice_loss_ratio']:.2f}x; lower AUC: "
              f"{', '.join(option['labels_lower_per_slice']) or 'none'}), macro AUC {refined['macro_auc']:.3f} vs "
              f"{alone['macro_auc']:.3f}; per study `any` AUC {head['any']:.3f}, macro {head['macro_auc']:.3f} "
              f"({int(head['studies'])} studies); {'blessed' if option['blessed'] else 'not blessed'}; "
              f"{option['wall_time_s'] / 60:.1f} min")
        if "long_studies" in option:
            long = option["long_studies"]
            print(f"  {'':<9} on {long['studies']} held-out studies of 24-40 slices: per slice "
                  f"{long['refined_weighted_log_loss']:.4f} ({long['slice_loss_ratio']:.2f}x its ensemble), macro AUC "
                  f"{long['macro_auc']:.3f}; per study `any` AUC {long['study_head_any_auc']['auc']:.3f}")
    print(f"  better (lower per-slice weighted log loss of the refined output): {better}")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
