"""Does the study-context stage need to learn from studies of the length it serves?

    .venv/bin/python bench/study_lengths.py [--pipeline-root build/bench/pipeline] [--work build/bench/study-lengths]

The demo's study model learns from studies of 12 slices and serves studies of 24-60 (RSNA). Here the context model
(ich_model/context_model.py, the context Trainer's settings) is fitted, per seed, on three sets of study records
scored by the same slice ensemble (bench/pipeline.py's run) and scored on the same held-out studies:

- `12 slices`: that run's own train split (the members' train split: in-fold, as the pipeline trains it);
- `24-40 slices`: another `ich synth` set (seed 2029, 120 patients) of studies of 24-40 slices, which the members
  never saw;
- `12 slices, no gaps`: the first with the gaps to the neighbouring slices zeroed (spacing left out).

Each is scored on `ich synth` seed 2028 (100 patients, 24-40 slices: bench/study.py's held-out studies) and on the
run's own eval split of 12-slice studies: per slice, the refined output's weighted log loss against the slice
ensemble's (goal of issue 24: at most 0.85x) and the macro AUC; per study, the head's `any` AUC against the slice
maximum's (goal: 0.98). The sets are written, ingested (the real DicomExampleGen) and scored (the real
StudySequenceGen) once into --work and reused.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import latest_ensemble_run, results_path, write_results  # noqa: E402 - after the path is set

HELD_OUT_SEED, LONG_TRAIN_SEED = 2028, 2029  # bench/study.py's held-out studies; a training set of long studies
LONG_SLICES = "24-40"
SEEDS = (0, 1)
SLICE_LOSS_RATIO_GOAL, STUDY_ANY_AUC_GOAL = 0.85, 0.98


def study_records(name: str, seed: int, patients: int, ensemble_dir: str, work: Path) -> list[str]:
    """The study records of an `ich synth` set of long studies scored by the ensemble (made once in `work`)."""
    from tfx.types import standard_artifacts, standard_component_specs
    from tfx.utils import proto_utils

    from components.dicom_example_gen.component import DicomExampleGen
    from components.dicom_example_gen.executor import Executor as ExampleGenExecutor
    from components.study_sequences.executor import EXAMPLES_KEY, MODEL_KEY, STUDY_SEQUENCES_KEY
    from components.study_sequences.executor import Executor as SequencesExecutor
    from ich_model.synth import LABELS_CSV, generate_dataset, parse_slices_per_study
    from pipeline.configs import preset

    root = work / name

    def records() -> list[str]:
        return sorted(glob.glob(str(root / "sequences" / "Split-*" / "*.gz")))

    if records():
        return records()
    demo, beam_args = preset("demo").synth, ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
    if not (root / "data" / LABELS_CSV).exists():
        print(f"{name}: generating {patients} patients, {LONG_SLICES} slices per study, seed {seed}", flush=True)
        generate_dataset(root / "data", patients, parse_slices_per_study(LONG_SLICES), seed,
                         positive_fraction=demo.positive_fraction, subtype_mix=demo.subtype_mix)
    print(f"{name}: ingesting and scoring with {ensemble_dir}", flush=True)
    component = DicomExampleGen(str(root / "data"), train_share=0.5)
    properties = {key: proto_utils.proto_to_json(value) if hasattr(value, "DESCRIPTOR") else value
                  for key, value in component.exec_properties.items()}
    examples = standard_artifacts.Examples()
    examples.uri = str(root / "examples")
    ExampleGenExecutor(ExampleGenExecutor.Context(beam_pipeline_args=beam_args)).Do(
        {}, {standard_component_specs.EXAMPLES_KEY: [examples]}, properties)
    model, sequences = standard_artifacts.Model(), standard_artifacts.Examples()
    model.uri, sequences.uri = str(Path(ensemble_dir).parent), str(root / "sequences")
    SequencesExecutor(SequencesExecutor.Context(beam_pipeline_args=beam_args)).Do(
        {EXAMPLES_KEY: [examples], MODEL_KEY: [model]}, {STUDY_SEQUENCES_KEY: [sequences]}, {})
    return records()


def scored(model, files: list[str], batch_size: int, without_gaps: bool) -> dict:
    """Per slice and per study figures of `model` on the records in `files`."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from bench.quality import figures
    from ich_model.constants import ANY, LABELS
    from ich_model.context_model import predict_studies, study_batches

    batches = study_batches(files, batch_size, training=False)
    predictions = predict_studies(model, _without_gaps(batches) if without_gaps else batches)
    labels = np.concatenate(predictions.slice_labels)
    refined = figures(labels, np.concatenate(predictions.refined))
    alone = figures(labels, np.concatenate(predictions.slice_only))
    any_index = LABELS.index(ANY)
    truth = predictions.study_labels[:, any_index]
    return {"slice_loss_ratio": refined["weighted_log_loss"] / alone["weighted_log_loss"],
            "refined": refined, "slice_ensemble": alone, "series": len(predictions.refined),
            "study_any_auc_head": float(roc_auc_score(truth, predictions.study[:, any_index])),
            "study_any_auc_slice_maximum": float(roc_auc_score(truth, predictions.max_rule[:, any_index]))}


def _without_gaps(batches):
    import tensorflow as tf

    from ich_model.context_model import GAPS

    return batches.map(lambda inputs, labels: ({**inputs, GAPS: tf.zeros_like(inputs[GAPS])}, labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline-root", default=str(ROOT / "build" / "bench" / "pipeline"))
    parser.add_argument("--pipeline-name", default="ich")
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "study-lengths")
    parser.add_argument("--json", type=Path, default=results_path("study_lengths"))
    args = parser.parse_args()

    import numpy as np

    from ich_model.context_model import build_context_model, fit_context_model, study_batches
    from ich_model.context_trainer import embedding_size
    from ich_model.settings import ContextSettings
    from pipeline.summary import execution_artifacts, latest_execution

    run = latest_ensemble_run(args.pipeline_root, args.pipeline_name)
    sequences = execution_artifacts(run.store, latest_execution(run.store, args.pipeline_name, "StudySequenceGen",
                                                                run.run))[1]["study_sequences"][0]
    own = {split: sorted(glob.glob(os.path.join(sequences.uri, f"Split-{split}", "*.gz")))  # TFX's split folders
           for split in ("train", "eval")}
    held_out = study_records("held-out", HELD_OUT_SEED, 100, run.ensemble_dir, args.work)
    long_train = study_records("long-train", LONG_TRAIN_SEED, 120, run.ensemble_dir, args.work)
    trainings = {"12 slices": (own["train"], False), "24-40 slices": (long_train, False),
                 "12 slices, no gaps": (own["train"], True)}
    evaluations = {"held-out studies of 24-40 slices": held_out, "the run's eval split (12 slices)": own["eval"]}
    settings = ContextSettings()
    results = {"context_settings": settings.as_custom_config(), "seeds": list(SEEDS),
               "slice_loss_ratio_goal": SLICE_LOSS_RATIO_GOAL, "study_any_auc_goal": STUDY_ANY_AUC_GOAL,
               "trainings": {}}
    for name, (files, without_gaps) in trainings.items():
        per_seed = []
        for seed in SEEDS:
            model = build_context_model(embedding_size(files), units=settings.units, seed=seed)
            batches = study_batches(files, settings.batch_size, training=True, seed=seed)
            fit_context_model(model, _without_gaps(batches) if without_gaps else batches, settings.train_steps,
                              settings.learning_rate)
            per_seed.append({where: scored(model, eval_files, settings.batch_size, without_gaps)
                             for where, eval_files in evaluations.items()})
        mean = {where: {key: float(np.mean([s[where][key] for s in per_seed]))
                        for key in ("slice_loss_ratio", "study_any_auc_head", "study_any_auc_slice_maximum")}
                for where in evaluations}
        for where in evaluations:
            mean[where]["macro_auc"] = float(np.mean([s[where]["refined"]["macro_auc"] for s in per_seed]))
            mean[where]["slice_ensemble_macro_auc"] = per_seed[0][where]["slice_ensemble"]["macro_auc"]
        results["trainings"][name] = {"mean": mean, "per_seed": per_seed}
        for where, row in mean.items():
            print(f"  trained on {name:<19} scored on {where:<33}: per slice {row['slice_loss_ratio']:.3f}x the "
                  f"ensemble's weighted log loss, macro AUC {row['macro_auc']:.3f} (ensemble "
                  f"{row['slice_ensemble_macro_auc']:.3f}); per study `any` AUC {row['study_any_auc_head']:.3f} "
                  f"(slice maximum {row['study_any_auc_slice_maximum']:.3f}); mean of {len(SEEDS)} seeds",
                  flush=True)
    write_results(args.json, results)


if __name__ == "__main__":
    main()
