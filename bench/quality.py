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


def scored(paths, model_dir, labels_by_id):
    """`ich predict`'s scoring of `paths` with the SavedModel, and the labels in the same slice order."""
    import numpy as np

    from ich_model.predict import predict

    result = predict(paths, model_dir, progress=False)
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


def train_architecture(architecture: str, seed: int, run: dict, out_dir: Path) -> str:
    """One network trained by ich_model.trainer.run_fn on the fn_args that TFX builds from the run's member A
    Trainer execution (its Examples, transform graph, steps and settings), from scratch, with `architecture` and
    `seed`; returns its exported SavedModel."""
    from tfx.components.trainer import fn_args_utils

    from ich_model.trainer import run_fn

    inputs = {key: artifacts for key, artifacts in run["trainer_inputs"].items() if key != "base_model"}
    properties = {**run["trainer_properties"],
                  "custom_config": json.dumps({**run["custom_config"], "architecture": architecture, "seed": seed})}
    fn_args = fn_args_utils.get_common_fn_args(inputs, properties)
    fn_args.serving_model_dir = str(out_dir / architecture / f"seed{seed}" / "serving")
    fn_args.model_run_dir = str(out_dir / architecture / f"seed{seed}" / "run")
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-root", default=str(ROOT / "build" / "bench" / "pipeline"))
    parser.add_argument("--pipeline-name", default="ich")
    parser.add_argument("--patients", type=int, default=200, help="held-out patients (the demo set has 150)")
    parser.add_argument("--seeds", type=int, default=3, help="trainings of each ablation network (seeds 1..N)")
    parser.add_argument("--held-out", type=Path, default=ROOT / "build" / "bench" / "held-out")
    parser.add_argument("--json", type=Path, default=results_path("quality"))
    args = parser.parse_args()

    from sklearn.metrics import roc_auc_score

    from ich_model.constants import ABBREVIATIONS, LABELS
    from ich_model.labels import read_rsna_labels
    from ich_model.members import MEMBERS
    from ich_model.synth import LABELS_CSV, generate_dataset
    from pipeline.configs import preset

    if not (args.held_out / LABELS_CSV).exists():
        demo = preset("demo").synth
        print(f"generating the held-out set: {args.patients} patients, seed {HELD_OUT_SEED}", flush=True)
        generate_dataset(args.held_out, args.patients, demo.slices_per_study, HELD_OUT_SEED,
                         positive_fraction=demo.positive_fraction, subtype_mix=demo.subtype_mix)
    labels_by_id = read_rsna_labels(args.held_out / LABELS_CSV).labels
    run = latest_run(args.pipeline_root, args.pipeline_name)
    results = {"held_out": {"patients": args.patients, "seed": HELD_OUT_SEED}, "train_steps": run["train_steps"],
               "batch_size": run["custom_config"].get("batch_size")}

    print(f"scoring the held-out set with the ensemble {run['ensemble']}", flush=True)
    ensemble, labels = scored([args.held_out], run["ensemble"], labels_by_id)
    results["held_out"]["slices"] = len(labels)
    results["held_out"]["positives"] = dict(zip(LABELS, labels.sum(axis=0).astype(int).tolist(), strict=True))
    models = {"ensemble": figures(labels, ensemble.probabilities)}
    for index, name in enumerate(MEMBERS):  # the Ensemble component stacks them in this order
        models[f"member_{name}"] = figures(labels, ensemble.member_probabilities[:, index])
    results["ensemble_vs_members"] = models
    results["ensemble_goal_met"] = at_least_as_good(models["ensemble"],
                                                    [row for m, row in models.items() if m != "ensemble"])

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
        for architecture in ARCHITECTURES:
            per_seed = []
            for seed in range(1, args.seeds + 1):
                print(f"training {architecture}, seed {seed} of {args.seeds}: {run['train_steps']} steps, "
                      "member A's recipe", flush=True)
                model_dir = train_architecture(architecture, seed, run, Path(tmp))
                result, _ = scored([args.held_out], model_dir, labels_by_id)
                per_seed.append(figures(labels, result.probabilities))
                print(f"  {architecture}, seed {seed}: macro AUC {per_seed[-1]['macro_auc']:.3f}, weighted log "
                      f"loss {per_seed[-1]['weighted_log_loss']:.4f}", flush=True)
            ablation[architecture] = {**over_seeds(per_seed),
                                      "parameters": build_network(network_spec(
                                          architecture, run["custom_config"]["preset"])).count_params()}
    results["ablation"] = ablation
    results["ablation_seeds"] = args.seeds
    results["cascade_goal_met"] = at_least_as_good(ablation["cascade"],
                                                   [ablation[a] for a in ARCHITECTURES if a != "cascade"])

    print(f"\nheld-out: {len(labels)} slices of {args.patients} patients (seed {HELD_OUT_SEED})")
    header = "  ".join(f"{ABBREVIATIONS[label]:>6}" for label in PAPER_ORDER)
    print(f"  {'model':<31}{header}  {'macro':>12}  {'wLogLoss':>15}  {'params':>7}")
    rows = {**results["ensemble_vs_members"],
            **{f"{name} (mean of {args.seeds})": row for name, row in ablation.items()}}
    for name, row in rows.items():
        aucs = "  ".join("   n/a" if row["auc"][label] is None else f"{row['auc'][label]:6.3f}"
                         for label in PAPER_ORDER)
        params = f"{row['parameters'] / 1e6:6.2f}M" if "parameters" in row else ""
        print(f"  {name:<31}{aucs}  {with_sd(row, 'macro_auc', 3):>12}  {with_sd(row, 'weighted_log_loss', 4):>15}"
              f"  {params:>7}")
    print(f"  ensemble at least as good as its best member: {results['ensemble_goal_met']}")
    print(f"  cascade at least as good as both single-family networks (means over {args.seeds} seeds): "
          f"{results['cascade_goal_met']}")
    print("  ECE per label (exported -> Platt on the eval split): " + ", ".join(
        f"{ABBREVIATIONS[label]} {v['exported']:.3f} -> {v['platt_on_eval_split']:.3f}"
        for label, v in results["calibration_ece"].items()))
    print(f"  AUROC of the spread on `any` for its {results['wrong_any_calls']} wrong calls: "
          f"{results['spread_flags_errors_auroc']}")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
