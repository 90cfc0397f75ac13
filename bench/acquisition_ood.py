"""A probe for the out-of-distribution score: do a slice's acquisition statistics tell the shifted set apart?

    .venv/bin/python bench/acquisition_ood.py [--data data/demo] [--reference-slices 600] [--patients 40]

The shipped OOD score (the Mahalanobis distance of the members' pooled features, ich_model/ood.py) barely tells a
slice of the shifted set (`ich synth --shift`: every nuisance parameter from outside the training ranges) from an
in-distribution one (AUROC 0.58 in bench/quality.py). This probe asks whether statistics of the pixels themselves,
which a scanner's calibration, dose and kernel set, would: per slice, from its Hounsfield units at full
resolution,

- brain: the mean and standard deviation of the pixels between 0 and 100 HU, and their share of the image;
- noise: the mean absolute Laplacian inside that brain mask (eroded by two pixels, so that edges do not count);
- bone: the share of pixels above 400 HU and their mean; air: the mean below -500 HU.

A Gaussian is fitted on a sample of the training set's slices (--data), and each statistic's distance from its
mean, and the Mahalanobis distance of all of them, are scored as the AUROC of telling the shifted set's slices
(seed 2027) from held-out in-distribution slices (seed 2026), with and without the noise measure. Nothing here is
shipped: it measures whether building the score into the ensemble would pay.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import results_path, write_results  # noqa: E402 - after the path is set

HELD_OUT_SEED, SHIFTED_SEED = 2026, 2027  # bench/quality.py's sets
STATISTICS = ("brain mean HU", "brain HU sd", "brain share", "noise (mean |Laplacian| in brain)", "bone share",
              "bone mean HU", "air mean HU")
NOISE = STATISTICS.index("noise (mean |Laplacian| in brain)")
BRAIN_HU, BONE_HU, AIR_HU = (0.0, 100.0), 400.0, -500.0


def acquisition_statistics(path: str):
    """STATISTICS of one DICOM slice, in that order."""
    import numpy as np
    from scipy import ndimage

    from ich_model.dicom import read_slice

    hu = read_slice(path).hounsfield_units().astype(np.float64)
    brain, bone, air = (hu > BRAIN_HU[0]) & (hu < BRAIN_HU[1]), hu > BONE_HU, hu < AIR_HU
    inner = ndimage.binary_erosion(brain, iterations=2)
    laplacian = np.abs(ndimage.laplace(hu))
    return np.array([hu[brain].mean() if brain.any() else 0.0, hu[brain].std() if brain.any() else 0.0,
                     brain.mean(), laplacian[inner].mean() if inner.any() else 0.0, bone.mean(),
                     hu[bone].mean() if bone.any() else 0.0, hu[air].mean() if air.any() else -1000.0])


def folder_statistics(folder: Path, limit: int | None = None):
    import numpy as np

    from ich_model.synth import IMAGES_DIR

    files = sorted(glob.glob(os.path.join(folder, IMAGES_DIR, "*.dcm")))
    if limit and len(files) > limit:
        files = sorted(np.random.default_rng(0).choice(files, limit, replace=False))
    return np.stack([acquisition_statistics(f) for f in files])


def mahalanobis(reference, columns: list[int]):
    """The squared Mahalanobis distance to the Gaussian of `reference`'s `columns` (a small ridge keeps it
    invertible)."""
    import numpy as np

    from ich_model.ood import squared_distances

    # The shipped score's distance, with one "member" and one class: [N, 1, D] against [1, 1, D].
    mean = reference[:, columns].mean(axis=0)[None, None]
    precision = np.linalg.inv(np.cov(reference[:, columns], rowvar=False) + 1e-6 * np.eye(len(columns)))[None]

    def distance(values):
        return squared_distances(values[:, None, columns], mean, precision)[:, 0, 0]
    return distance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "demo")
    parser.add_argument("--reference-slices", type=int, default=600)
    parser.add_argument("--patients", type=int, default=40)
    parser.add_argument("--work", type=Path, default=ROOT / "build" / "bench" / "acquisition-ood")
    parser.add_argument("--json", type=Path, default=results_path("acquisition_ood"))
    args = parser.parse_args()

    import numpy as np
    from sklearn.metrics import roc_auc_score

    from ich_model.synth import LABELS_CSV, generate_dataset
    from pipeline.configs import preset

    demo = preset("demo").synth
    sets = {"held_out": (HELD_OUT_SEED, False), "shifted": (SHIFTED_SEED, True)}
    for name, (seed, shift) in sets.items():
        if not (args.work / name / LABELS_CSV).exists():
            print(f"generating the {name} set: {args.patients} patients, seed {seed}", flush=True)
            generate_dataset(args.work / name, args.patients, demo.slices_per_study, seed, shift=shift,
                             positive_fraction=demo.positive_fraction, subtype_mix=demo.subtype_mix)
    print(f"statistics of {args.reference_slices} slices of {args.data} and of both sets", flush=True)
    reference = folder_statistics(args.data, args.reference_slices)
    held_out, shifted = (folder_statistics(args.work / name) for name in sets)
    truth = np.r_[np.zeros(len(held_out)), np.ones(len(shifted))]

    def auroc(score) -> float:
        return float(roc_auc_score(truth, np.r_[score(held_out), score(shifted)]))

    results = {"reference_slices": len(reference), "held_out_slices": len(held_out), "shifted_slices": len(shifted),
               "per_statistic": {}, "medians": {}}
    for index, name in enumerate(STATISTICS):
        centre = reference[:, index].mean()
        results["per_statistic"][name] = auroc(lambda values, i=index, c=centre: np.abs(values[:, i] - c))
        results["medians"][name] = {"reference": float(np.median(reference[:, index])),
                                    "held_out": float(np.median(held_out[:, index])),
                                    "shifted": float(np.median(shifted[:, index]))}
        print(f"  {name:<34} median: reference {results['medians'][name]['reference']:9.3f}, held-out "
              f"{results['medians'][name]['held_out']:9.3f}, shifted {results['medians'][name]['shifted']:9.3f}; "
              f"AUROC of the distance from the mean {results['per_statistic'][name]:.3f}")
    every = list(range(len(STATISTICS)))
    joint = mahalanobis(reference, every)
    results["mahalanobis_auroc"] = auroc(joint)
    results["mahalanobis_auroc_without_noise"] = auroc(mahalanobis(reference, [i for i in every if i != NOISE]))
    threshold = np.percentile(joint(held_out), 95)
    results["shifted_flagged_at_5_percent_of_held_out"] = float(np.mean(joint(shifted) > threshold))
    print(f"  Mahalanobis of all: AUROC {results['mahalanobis_auroc']:.3f} (without the noise measure "
          f"{results['mahalanobis_auroc_without_noise']:.3f}); a threshold that flags 5% of the held-out slices "
          f"flags {results['shifted_flagged_at_5_percent_of_held_out']:.1%} of the shifted ones")
    write_results(args.json, results)


if __name__ == "__main__":
    main()
