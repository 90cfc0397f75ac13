"""Quality on held-out synthetic data: does the cascade earn its place, and does the ensemble?

    .venv/bin/python bench/quality.py [--pipeline-root build/bench/pipeline] [--patients 200]

Uses the latest run under the pipeline root (bench/pipeline.py's demo run): its ensemble, its Examples and its
transform graph. The held-out set is a separate `ich synth` seed with more patients than the demo set.

- Ablation at one training budget: the cascade, an EfficientNetV2-only and a ConvNeXt-only network (parameter
  counts within 25% of the cascade's) trained by the Trainer's own run_fn with member A's recipe, on the run's
  Examples, with the run's steps, batch and schedule, once per seed (`--seeds`, default 3: seeds 1..3 set the
  initialisation and the sampler's order; training on CPU is not bit-reproducible, so one training says little).
  Goal: the cascade's mean macro AUC and mean weighted log loss over the seeds at least as good as the better of
  the two.
- The ensemble against each of its members. Goal: at least as good as its best member.
- Calibration: expected calibration error per label (10 equal-width bins) as exported, and after per-label Platt
  scaling fitted on the run's eval split (the pipeline has no calibration step; this shows what one would give).
- Uncertainty: the AUROC of the members' spread on `any` for telling a wrong slice-level `any` call (at 0.5).
- The per-label AUC table in the RSNA papers' order (any, EDH, IPH, IVH, SAH, SDH).
- Under shift: the ensemble and each member on a set whose every nuisance parameter is drawn from outside the
  training ranges (`ich synth --shift`, seed 2027). Goal: macro AUC at least 0.90, and each label's mean
  predicted probability within 0.05 of its share of positive slices.
- Out of distribution: the AUROC of the ensemble's shipped `ood_score` (and, to compare, of the members' energy
  and disagreement) for telling the shifted set, and inputs that are not head CT (bench/robustness.py), from the
  in-distribution held-out set; the share of each set that the model flags; and the share of the wrong `any`
  calls that the flag catches. Goal: AUROC at least 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import latest_ensemble_run, results_path, with_sd, write_results  # noqa: E402 - after the path is set

HELD_OUT_SEED = 2026
SHIFTED_SEED = 2027
SHIFTED_MACRO_AUC_GOAL = 0.90
CALIBRATION_GAP_GOAL = 0.05  # |mean predicted probability - share of positives|, per label
OOD_AUROC_GOAL = 0.95
CALIBRATION_BINS = 10
PAPER_ORDER = ("any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")


def figures(labels, probabilities) -> dict:
    """Per-label AUC (sklearn; None without both classes), macro AUC and the weighted log loss."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from ich_model.constants import LABELS
    from ich_model.metrics import weighted_log_loss

    auc = {label: (float(roc_auc_score(labels[:, i], probabilities[:, i]))
                   if 0 < labels[:, i].sum() < len(labels) else None) for i, label in enumerate(LABELS)}
    defined = [v for v in auc.values() if v is not None]
    return {"auc": auc, "macro_auc": float(np.mean(defined)),
            "weighted_log_loss": float(weighted_log_loss(labels, probabilities))}


def at_least_as_good(candidate: dict, rivals: list[dict]) -> bool:
    """The goal's test: macro AUC no lower than the best rival's and weighted log loss no higher than the best."""
    return (candidate["macro_auc"] >= max(r["macro_auc"] for r in rivals)
            and candidate["weighted_log_loss"] <= min(r["weighted_log_loss"] for r in rivals))


def expected_calibration_error(labels, probabilities, bins: int = CALIBRATION_BINS) -> float:
    """Sum over equal-width probability bins of |observed share - mean prediction|, weighted by the bin's share."""
    import numpy as np

    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = index == b
        if inside.any():
            error += inside.mean() * abs(labels[inside].mean() - probabilities[inside].mean())
    return float(error)


def platt_scaled(train_labels, train_probabilities, probabilities):
    """Per label, a logistic regression on the logit fitted on (train) and applied to `probabilities`."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    def logit(p):
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))[:, None]

    scaled = probabilities.copy()
    for i in range(probabilities.shape[1]):
        if 0 < train_labels[:, i].sum() < len(train_labels):
            model = LogisticRegression(C=1e6).fit(logit(train_probabilities[:, i]), train_labels[:, i])
            scaled[:, i] = model.predict_proba(logit(probabilities[:, i]))[:, 1]
    return scaled


def predict_quietly(paths, model_dir):
    """`ich predict`'s scoring of `paths` with the SavedModel, without its progress bar."""
    from ich_model.predict import predict

    return predict(paths, model_dir, progress=False)


def scored(paths, model_dir, labels_by_id):
    """`ich predict`'s scoring of `paths` with the SavedModel, and the labels in the same slice order."""
    import numpy as np

    result = predict_quietly(paths, model_dir)
    return result, np.array([labels_by_id[i] for i in result.image_ids], np.float64)


def eval_split_scores(model_dir: str, eval_split: str):
    """The SavedModel's probabilities on the run's eval split Examples, and their labels."""
    import numpy as np
    import tensorflow as tf

    from ich_model.serving import PROBABILITIES, SERVING_SIGNATURE

    serve = tf.saved_model.load(model_dir).signatures[SERVING_SIGNATURE]
    records = [r.numpy() for r in tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(eval_split, "*.gz")),
                                                          compression_type="GZIP")]
    labels = np.array([tf.train.Example.FromString(r).features.feature["label"].int64_list.value for r in records])
    probabilities = np.concatenate([serve(examples=tf.constant(records[i:i + 32]))[PROBABILITIES].numpy()
                                    for i in range(0, len(records), 32)])
    return labels, probabilities


def over_seeds(per_seed: list[dict]) -> dict:
    """The mean of `figures` over trainings with different seeds, the sample standard deviation of the two
    summary figures, and each training's own figures."""
    import numpy as np

    def mean(values):
        defined = [v for v in values if v is not None]
        return float(np.mean(defined)) if defined else None

    def sd(values):
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    macro = [f["macro_auc"] for f in per_seed]
    loss = [f["weighted_log_loss"] for f in per_seed]
    return {"auc": {label: mean([f["auc"][label] for f in per_seed]) for label in per_seed[0]["auc"]},
            "macro_auc": mean(macro), "weighted_log_loss": mean(loss),
            "macro_auc_sd": sd(macro), "weighted_log_loss_sd": sd(loss), "per_seed": per_seed}


def train_variant(overrides: dict, run: dict, out_dir: Path) -> str:
    """One network trained by ich_model.trainer.run_fn on the fn_args that TFX builds from the run's member A
    Trainer execution (its Examples, transform graph, steps and settings), from scratch, with the Trainer
    settings in `overrides` (e.g. architecture and seed); returns its exported SavedModel."""
    from tfx.components.trainer import fn_args_utils

    from ich_model.trainer import run_fn

    inputs = {key: artifacts for key, artifacts in run["trainer_inputs"].items() if key != "base_model"}
    properties = {**run["trainer_properties"],
                  "custom_config": json.dumps({**run["custom_config"], **overrides})}
    fn_args = fn_args_utils.get_common_fn_args(inputs, properties)
    where = out_dir / "-".join(f"{key}-{value}" for key, value in sorted(overrides.items()))
    fn_args.serving_model_dir = str(where / "serving")
    fn_args.model_run_dir = str(where / "run")
    run_fn(fn_args)
    return fn_args.serving_model_dir


def latest_run(pipeline_root: str, pipeline_name: str) -> dict:
    """The latest run's ensemble, its eval split, and member A's Trainer execution (input artifacts and
    properties), from the metadata store."""
    from tfx.types import artifact_utils

    from pipeline.summary import execution_artifacts, latest_execution
    from pipeline.training import trainer_id

    run = latest_ensemble_run(pipeline_root, pipeline_name)
    trainer = latest_execution(run.store, pipeline_name, trainer_id("a"), run.run)
    types = {t.id: t for t in run.store.get_artifact_types()}
    trainer_inputs = {key: [artifact_utils.deserialize_artifact(types[a.type_id], a) for a in artifacts]
                      for key, artifacts in execution_artifacts(run.store, trainer)[0].items()}
    properties = {name: value.string_value for name, value in trainer.custom_properties.items()}
    return {
        "ensemble": run.ensemble_dir, "eval_split": run.eval_split,
        "trainer_inputs": trainer_inputs, "trainer_properties": properties,
        "custom_config": json.loads(properties["custom_config"]),
        "train_steps": json.loads(properties["train_args"]).get("num_steps"),
    }


def calibration_gaps(labels, probabilities) -> dict:
    """Per label, the mean predicted probability minus the share of positive slices."""
    from ich_model.constants import LABELS

    return {label: float(probabilities[:, i].mean() - labels[:, i].mean()) for i, label in enumerate(LABELS)}


def models_on(result, labels) -> dict:
    """`figures` and `calibration_gaps` of the ensemble and of each member (stacked in MEMBERS order) on one
    scored set."""
    from ich_model.members import MEMBERS

    outputs = {"ensemble": result.probabilities,
               **{f"member_{name}": result.member_probabilities[:, i] for i, name in enumerate(MEMBERS)}}
    return {name: {**figures(labels, p), "calibration_gap": calibration_gaps(labels, p)}
            for name, p in outputs.items()}


def ood_measures(result) -> dict:
    """Per slice, each out-of-distribution score: the shipped one when the model has it, and the two that the
    outputs give every model (bench/robustness.py)."""
    from bench.robustness import disagreement, energy

    measures = {"energy": energy(result.member_probabilities), "disagreement": disagreement(result.spread)}
    if result.ood_scores is not None:
        measures = {"ood_score (shipped)": result.ood_scores, **measures}
    return measures


def out_of_distribution_figures(in_distribution, labels, shifted, shifted_labels, not_head_ct: dict) -> dict:
    """AUROC of every OOD measure against the in-distribution held-out slices, for the shifted set and for the
    pooled and separate inputs that are not head CT; the share each set the model flags; and how many of the
    wrong `any` calls (at 0.5) the flag catches."""
    import numpy as np

    from bench.robustness import auroc
    from ich_model.constants import LABELS

    reference = ood_measures(in_distribution)
    others = {"shifted": shifted, **not_head_ct}
    figures_ = {"auroc": {}, "slices": {name: len(r.image_ids) for name, r in others.items()}}
    measured = {name: ood_measures(r) for name, r in others.items()}
    for measure, scores in reference.items():
        row = {name: auroc(scores, measured[name][measure]) for name in others}
        pooled = np.concatenate([measured[name][measure] for name in not_head_ct])
        row["not_head_ct (pooled)"] = auroc(scores, pooled)
        figures_["auroc"][measure] = row
    if "ood_score (shipped)" in reference:
        flagged = {"in_distribution": in_distribution, **others}
        figures_["flagged_share"] = {name: float(np.mean(r.ood_flags)) for name, r in flagged.items()}
        any_index = LABELS.index("any")
        caught = {}
        for name, result, truth in (("in_distribution", in_distribution, labels),
                                    ("shifted", shifted, shifted_labels)):
            wrong = (result.probabilities[:, any_index] >= 0.5) != truth[:, any_index].astype(bool)
            caught[name] = {"wrong_any_calls": int(wrong.sum()),
                            "flagged": int(np.sum(wrong & result.ood_flags))}
        figures_["wrong_any_calls_flagged"] = caught
    return figures_


def _pair(row: dict) -> str:
    return f"{with_sd(row, 'macro_auc', 3)} / {with_sd(row, 'weighted_log_loss', 4)}"


def print_models(title: str, models: dict) -> None:
    from ich_model.constants import ABBREVIATIONS

    header = "  ".join(f"{ABBREVIATIONS[label]:>6}" for label in PAPER_ORDER)
    print(f"\n{title}\n  {'model':<31}{header}  {'macro':>12}  {'wLogLoss':>15}  {'params':>7}")
    for name, row in models.items():
        aucs = "  ".join("   n/a" if row["auc"][label] is None else f"{row['auc'][label]:6.3f}"
                         for label in PAPER_ORDER)
        params = f"{row['parameters'] / 1e6:6.2f}M" if "parameters" in row else ""
        print(f"  {name:<31}{aucs}  {with_sd(row, 'macro_auc', 3):>12}  {with_sd(row, 'weighted_log_loss', 4):>15}"
              f"  {params:>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-root", default=str(ROOT / "build" / "bench" / "pipeline"))
    parser.add_argument("--pipeline-name", default="ich")
    parser.add_argument("--patients", type=int, default=200, help="held-out patients (the demo set has 150)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="trainings of each ablation network (seeds 1..N; 0 leaves the ablation out)")
    parser.add_argument("--intensity-seeds", type=int, default=2,
                        help="trainings of member A's recipe with and without the scanner intensity augmentation")
    parser.add_argument("--held-out", type=Path, default=ROOT / "build" / "bench" / "held-out")
    parser.add_argument("--shifted", type=Path, default=ROOT / "build" / "bench" / "shifted")
    parser.add_argument("--not-head-ct", type=Path, default=ROOT / "build" / "bench" / "not-head-ct")
    parser.add_argument("--json", type=Path, default=results_path("quality"))
    args = parser.parse_args()

    from sklearn.metrics import roc_auc_score

    from bench.robustness import write_not_head_ct
    from ich_model.constants import ABBREVIATIONS, LABELS
    from ich_model.labels import read_rsna_labels
    from ich_model.synth import IMAGES_DIR, LABELS_CSV, generate_dataset
    from pipeline.configs import preset

    demo = preset("demo").synth
    for folder, seed, shift in ((args.held_out, HELD_OUT_SEED, False), (args.shifted, SHIFTED_SEED, True)):
        if not (folder / LABELS_CSV).exists():
            print(f"generating the {'shifted' if shift else 'held-out'} set: {args.patients} patients, seed {seed}",
                  flush=True)
            generate_dataset(folder, args.patients, demo.slices_per_study, seed, shift=shift,
                             positive_fraction=demo.positive_fraction, subtype_mix=demo.subtype_mix)
    labels_by_id = {**read_rsna_labels(args.held_out / LABELS_CSV).labels,
                    **read_rsna_labels(args.shifted / LABELS_CSV).labels}
    run = latest_run(args.pipeline_root, args.pipeline_name)
    results = {"held_out": {"patients": args.patients, "seed": HELD_OUT_SEED},
               "shifted": {"patients": args.patients, "seed": SHIFTED_SEED},
               "train_steps": run["train_steps"], "batch_size": run["custom_config"].get("batch_size")}

    print(f"scoring the held-out and shifted sets with the ensemble {run['ensemble']}", flush=True)
    ensemble, labels = scored([args.held_out], run["ensemble"], labels_by_id)
    shifted, shifted_labels = scored([args.shifted], run["ensemble"], labels_by_id)
    for key, truth in (("held_out", labels), ("shifted", shifted_labels)):
        results[key]["slices"] = len(truth)
        results[key]["positives"] = dict(zip(LABELS, truth.sum(axis=0).astype(int).tolist(), strict=True))
    models = models_on(ensemble, labels)
    results["ensemble_vs_members"] = models
    results["ensemble_goal_met"] = at_least_as_good(models["ensemble"],
                                                    [row for m, row in models.items() if m != "ensemble"])
    shifted_models = models_on(shifted, shifted_labels)
    results["shifted_models"] = shifted_models
    gaps = shifted_models["ensemble"]["calibration_gap"]
    results["shifted_goal_met"] = bool(shifted_models["ensemble"]["macro_auc"] >= SHIFTED_MACRO_AUC_GOAL
                                       and max(abs(g) for g in gaps.values()) <= CALIBRATION_GAP_GOAL)

    templates = sorted((args.held_out / IMAGES_DIR).glob("*.dcm"))
    folders = write_not_head_ct(args.not_head_ct, templates, HELD_OUT_SEED)
    not_head_ct = {kind: predict_quietly([folder], run["ensemble"]) for kind, folder in folders.items()}
    results["out_of_distribution"] = out_of_distribution_figures(ensemble, labels, shifted, shifted_labels,
                                                                 not_head_ct)
    auroc = results["out_of_distribution"]["auroc"].get("ood_score (shipped)")
    results["ood_goal_met"] = None if auroc is None else bool(min(auroc.values()) >= OOD_AUROC_GOAL)

    eval_labels, eval_probabilities = eval_split_scores(run["ensemble"], run["eval_split"])
    calibrated = platt_scaled(eval_labels, eval_probabilities, ensemble.probabilities)
    results["calibration_ece"] = {
        label: {"exported": expected_calibration_error(labels[:, i], ensemble.probabilities[:, i]),
                "platt_on_eval_split": expected_calibration_error(labels[:, i], calibrated[:, i])}
        for i, label in enumerate(LABELS)}
    any_index = LABELS.index("any")
    wrong = (ensemble.probabilities[:, any_index] >= 0.5) != labels[:, any_index].astype(bool)
    results["spread_flags_errors_auroc"] = (float(roc_auc_score(wrong, ensemble.spread[:, any_index]))
                                            if 0 < wrong.sum() < len(wrong) else None)
    results["wrong_any_calls"] = int(wrong.sum())

    from ich_model.model.network import build_network
    from ich_model.model.presets import ARCHITECTURES, network_spec

    ablation = {}
    with tempfile.TemporaryDirectory(prefix="ich-bench-ablation-") as tmp:
        for architecture in ARCHITECTURES if args.seeds > 0 else ():
            per_seed = []
            for seed in range(1, args.seeds + 1):
                print(f"training {architecture}, seed {seed} of {args.seeds}: {run['train_steps']} steps, "
                      "member A's recipe", flush=True)
                model_dir = train_variant({"architecture": architecture, "seed": seed}, run, Path(tmp))
                result, _ = scored([args.held_out], model_dir, labels_by_id)
                per_seed.append(figures(labels, result.probabilities))
                print(f"  {architecture}, seed {seed}: macro AUC {per_seed[-1]['macro_auc']:.3f}, weighted log "
                      f"loss {per_seed[-1]['weighted_log_loss']:.4f}", flush=True)
            ablation[architecture] = {**over_seeds(per_seed),
                                      "parameters": build_network(network_spec(
                                          architecture, run["custom_config"]["preset"])).count_params()}
        intensity = {}
        for on in (True, False) if args.intensity_seeds > 0 else ():
            per_seed = {"held_out": [], "shifted": []}
            for seed in range(1, args.intensity_seeds + 1):
                print(f"training member A's recipe with the scanner intensity augmentation {'on' if on else 'off'}, "
                      f"seed {seed} of {args.intensity_seeds}", flush=True)
                model_dir = train_variant({"scanner_intensity": on, "seed": seed}, run, Path(tmp))
                for key, folder in (("held_out", args.held_out), ("shifted", args.shifted)):
                    result, truth = scored([folder], model_dir, labels_by_id)
                    per_seed[key].append(figures(truth, result.probabilities))
                print(f"  held-out macro AUC {per_seed['held_out'][-1]['macro_auc']:.3f}, shifted "
                      f"{per_seed['shifted'][-1]['macro_auc']:.3f}", flush=True)
            intensity["on" if on else "off"] = {key: over_seeds(rows) for key, rows in per_seed.items()}
    if intensity:
        results["scanner_intensity_ablation"] = {**intensity, "seeds": args.intensity_seeds}
    if ablation:
        results["ablation"] = ablation
        results["ablation_seeds"] = args.seeds
        results["cascade_goal_met"] = at_least_as_good(ablation["cascade"],
                                                       [ablation[a] for a in ARCHITECTURES if a != "cascade"])

    print_models(f"held-out: {len(labels)} slices of {args.patients} patients (seed {HELD_OUT_SEED})",
                 {**models, **{f"{name} (mean of {args.seeds})": row for name, row in ablation.items()}})
    print(f"  ensemble at least as good as its best member: {results['ensemble_goal_met']}")
    if ablation:
        print(f"  cascade at least as good as both single-family networks (means over {args.seeds} seeds): "
              f"{results['cascade_goal_met']}")
    print("  ECE per label (exported -> Platt on the eval split): " + ", ".join(
        f"{ABBREVIATIONS[label]} {v['exported']:.3f} -> {v['platt_on_eval_split']:.3f}"
        for label, v in results["calibration_ece"].items()))
    print(f"  AUROC of the spread on `any` for its {results['wrong_any_calls']} wrong calls: "
          f"{results['spread_flags_errors_auroc']}")
    print_models(f"shifted: {len(shifted_labels)} slices of {args.patients} patients (seed {SHIFTED_SEED})",
                 shifted_models)
    print("  ensemble's mean probability minus the share of positives: " + ", ".join(
        f"{ABBREVIATIONS[label]} {gap:+.3f}" for label, gap in gaps.items()))
    print(f"  macro AUC >= {SHIFTED_MACRO_AUC_GOAL} and every gap within {CALIBRATION_GAP_GOAL}: "
          f"{results['shifted_goal_met']}")
    if intensity:
        print(f"\nmember A's recipe, scanner intensity on vs off (mean of {args.intensity_seeds} seeds), macro AUC / "
              "wLogLoss: " + "; ".join(f"{state}: held-out {_pair(row['held_out'])}, shifted {_pair(row['shifted'])}"
                                       for state, row in intensity.items()))
    ood = results["out_of_distribution"]
    print("\nout of distribution, AUROC against the in-distribution held-out slices:")
    for measure, row in ood["auroc"].items():
        print(f"  {measure:<22}" + ", ".join(f"{name} {value:.3f}" for name, value in row.items()))
    if "flagged_share" in ood:
        print("  flagged share: " + ", ".join(f"{name} {share:.1%}" for name, share in ood["flagged_share"].items()))
        print("  wrong `any` calls flagged: " + ", ".join(
            f"{name} {c['flagged']} of {c['wrong_any_calls']}" for name, c in ood["wrong_any_calls_flagged"].items()))
    write_results(args.json, results)


if __name__ == "__main__":
    main()
