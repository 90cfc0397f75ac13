"""The study model on held-out studies of RSNA-like length: does reading a study as a sequence pay, per slice and
per study, and do the operating points chosen on the eval split hold on studies the pipeline never saw?

    .venv/bin/python bench/study.py [--model build/bench/pipeline/serving] [--patients 100] [--slices 24-40]

The model is the newest version in the serving folder (the study model that bench/pipeline.py's run published).
The held-out set is `ich synth` seed 2028 with the demo's generator settings but RSNA-like study lengths
(--slices; RSNA holds about 24 to 60 slices per study, the demo trains on 12), scored as `ich predict` scores it
(one study per call).

- Per slice: the refined output's weighted log loss against the slice ensemble's on the same slices (goal: at
  most 0.85x), each label's AUC (goal: none lower) and the macro AUC of both.
- Per study (label: any slice positive): each label's AUC for the study head and for the slice maximum, with
  bootstrap 95% intervals over the studies (--bootstrap resamples). Goal: the head's `any` AUC at least 0.98.
- The operating points the model ships (chosen on its eval split): the sensitivity and specificity they give on
  these studies, with Wilson 95% intervals, against their targets (not judged: a target holds on the split it was
  chosen on, by construction; this shows how far it carries).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import published_model, results_path, write_results  # noqa: E402 - after the path is set

HELD_OUT_SEED = 2028
SLICE_LOSS_RATIO_GOAL = 0.85
STUDY_ANY_AUC_GOAL = 0.98


def auc_with_interval(labels, scores, resamples: int, seed: int = 0) -> dict:
    """sklearn's AUC and the 2.5th and 97.5th percentiles of it over `resamples` bootstrap draws of the rows (a
    draw without both classes is drawn again); None without both classes."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    labels, scores = np.asarray(labels), np.asarray(scores)
    if labels.min() == labels.max():
        return {"auc": None, "interval": None}
    rng, draws = np.random.default_rng(seed), []
    while len(draws) < resamples:
        rows = rng.integers(0, len(labels), len(labels))
        if labels[rows].min() != labels[rows].max():
            draws.append(roc_auc_score(labels[rows], scores[rows]))
    return {"auc": float(roc_auc_score(labels, scores)),
            "interval": [float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "build" / "bench" / "pipeline" / "serving"))
    parser.add_argument("--patients", type=int, default=100)
    parser.add_argument("--slices", default="24-40", help="slices per study: a count or a range")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--held-out", type=Path, default=ROOT / "build" / "bench" / "held-out-studies")
    parser.add_argument("--json", type=Path, default=results_path("study"))
    args = parser.parse_args()

    import numpy as np

    from bench.quality import figures
    from ich_model.constants import ANY, LABELS
    from ich_model.description import read_description
    from ich_model.labels import read_rsna_labels
    from ich_model.operating_points import LEVELS, SLICE_LEVEL, STUDY_LEVEL, measure, thresholds
    from ich_model.predict import predict
    from ich_model.synth import LABELS_CSV, generate_dataset, parse_slices_per_study
    from pipeline.configs import preset

    model_dir = published_model(args.model)
    description = read_description(model_dir)
    if description["kind"] != "study":
        raise SystemExit(f"{model_dir} is a {description['kind']} export; this benchmark needs a study model")
    slices = parse_slices_per_study(args.slices)
    demo = preset("demo").synth
    if not (args.held_out / LABELS_CSV).exists():
        print(f"generating the held-out studies: {args.patients} patients, {args.slices} slices per study, seed "
              f"{HELD_OUT_SEED}", flush=True)
        generate_dataset(args.held_out, args.patients, slices, HELD_OUT_SEED, positive_fraction=demo.positive_fraction,
                         subtype_mix=demo.subtype_mix)
    labels_by_id = read_rsna_labels(args.held_out / LABELS_CSV).labels
    print(f"scoring them with {model_dir}, a study at a time", flush=True)
    result = predict([args.held_out], model_dir, progress=True)
    labels = np.array([labels_by_id[i] for i in result.image_ids], np.float64)
    studies = sorted(result.study_heads)
    rows = {study: [i for i, s in enumerate(result.study_uids) if s == study] for study in studies}
    study_labels = np.stack([labels[rows[s]].max(axis=0) for s in studies])
    heads = np.stack([result.study_heads[s] for s in studies])
    maxima = np.stack([result.probabilities[rows[s]].max(axis=0) for s in studies])

    per_slice = {"refined": figures(labels, result.refined), "slice_only": figures(labels, result.probabilities)}
    ratio = per_slice["refined"]["weighted_log_loss"] / per_slice["slice_only"]["weighted_log_loss"]
    lower = [label for label in LABELS if per_slice["refined"]["auc"][label] is not None
             and per_slice["refined"]["auc"][label] < per_slice["slice_only"]["auc"][label]]
    per_study = {name: {label: auc_with_interval(study_labels[:, i], scores[:, i], args.bootstrap)
                        for i, label in enumerate(LABELS)}
                 for name, scores in (("study_head", heads), ("slice_maximum", maxima))}
    points = description.get("operating_points")
    operating = None
    if points:
        operating = {level: {label: {**measure(scores[:, i], truth[:, i], level_thresholds[i]).description(),
                                     "target": points["target_sensitivity"][level]}
                             for i, label in enumerate(LABELS)}
                     for level, truth, scores, level_thresholds in (
                         (SLICE_LEVEL, labels, result.refined, thresholds(description, SLICE_LEVEL)),
                         (STUDY_LEVEL, study_labels, heads, thresholds(description, STUDY_LEVEL)))}
    any_auc = per_study["study_head"][ANY]["auc"]
    results = {
        "model": model_dir, "patients": args.patients, "seed": HELD_OUT_SEED, "slices_per_study": args.slices,
        "slices": len(labels), "studies": len(studies), "skipped": len(result.skipped),
        "slice_positives": dict(zip(LABELS, labels.sum(axis=0).astype(int).tolist(), strict=True)),
        "study_positives": dict(zip(LABELS, study_labels.sum(axis=0).astype(int).tolist(), strict=True)),
        "per_slice": per_slice, "slice_loss_ratio": ratio, "slice_loss_ratio_goal": SLICE_LOSS_RATIO_GOAL,
        "labels_lower_per_slice": lower,
        "slice_goal_met": bool(ratio <= SLICE_LOSS_RATIO_GOAL and not lower),
        "per_study": per_study, "study_any_auc_goal": STUDY_ANY_AUC_GOAL,
        "study_goal_met": None if any_auc is None else bool(any_auc >= STUDY_ANY_AUC_GOAL),
        "operating_points": operating, "bootstrap_resamples": args.bootstrap,
    }
    print(f"\n  {len(labels)} slices of {len(studies)} held-out studies ({args.slices} slices each)")
    print(f"  per slice, weighted log loss: study model {per_slice['refined']['weighted_log_loss']:.4f}, slice "
          f"ensemble {per_slice['slice_only']['weighted_log_loss']:.4f}: {ratio:.2f}x (goal <= "
          f"{SLICE_LOSS_RATIO_GOAL}x); macro AUC {per_slice['refined']['macro_auc']:.3f} vs "
          f"{per_slice['slice_only']['macro_auc']:.3f}; labels with a lower AUC: {', '.join(lower) or 'none'}")
    for name, by_label in per_study.items():
        print(f"  per study, {name.replace('_', ' ')}: " + ", ".join(
            f"{label} {v['auc']:.3f} [{v['interval'][0]:.3f}, {v['interval'][1]:.3f}]" if v["auc"] is not None
            else f"{label} n/a" for label, v in by_label.items()))
    for level in LEVELS if operating else ():
        point = operating[level][ANY]
        print(f"  operating point per {level} for {ANY} (target {point['target']:g} on the eval split): "
              f"sensitivity here {point['sensitivity']:.3f}, specificity {point['specificity']:.3f}")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
