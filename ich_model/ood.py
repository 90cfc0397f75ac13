"""Out-of-distribution score: how far a slice's embeddings lie from the training slices' (numpy only).

The method of Lee et al., "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks" (NeurIPS 2018): class-conditional Gaussians with one tied covariance on a network's pooled features.
Here, for each member m of the ensemble, on its embedding (ich_model/serving.py, `embedding` [B, M, D]):

    classes c        the `any` label (0, 1) of the training slices
    mean[m, c]       the mean embedding of the training slices of class c
    covariance[m]    the pooled within-class covariance (tied over classes), shrunk towards its diagonal:
                     (1 - SHRINKAGE) * S + SHRINKAGE * diag(S); with ~1,500 slices of D = 128 (tiny) to 768
                     (s) dims the sample covariance S is noisy or singular, its diagonal is not
    score(x)         mean over members of min over classes of (x_m - mean[m, c])^T precision[m] (x_m - mean[m, c])

The mean over members keeps one member's odd feature from deciding alone; the minimum over classes lets a
bleed look like the bleeds, not like the average slice. The flag threshold is set on held-out (eval split)
slices, so that at most IN_DISTRIBUTION_FLAG_SHARE of in-distribution slices are flagged.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

METHOD = "mahalanobis_class_conditional"
REFERENCE = "Lee et al., NeurIPS 2018 (arXiv:1807.03888)"
# Weight of the diagonal in the shrunk covariance: enough to invert it from fewer slices than dims, small
# enough to keep the correlations between features that a held-out slice is measured against.
SHRINKAGE = 0.1
# A feature constant over the training slices would make even the diagonal singular: give it this share of the
# mean variance instead.
VARIANCE_FLOOR = 1e-6
# Held-out (in-distribution) slices flagged at most: the threshold is their 95th percentile.
IN_DISTRIBUTION_FLAG_SHARE = 0.05
# Bins of the held-out scores' histogram in the description (the run report draws it).
HISTOGRAM_BINS = 30


def shrunk_covariance(centred: np.ndarray) -> np.ndarray:
    """[N, D] samples minus their class means -> the tied covariance [D, D], shrunk towards its diagonal."""
    covariance = centred.T @ centred / len(centred)
    variances = np.diag(covariance)
    variances = np.maximum(variances, VARIANCE_FLOOR * max(variances.mean(), np.finfo(np.float64).tiny))
    return (1.0 - SHRINKAGE) * covariance + SHRINKAGE * np.diag(variances)


def squared_distances(embeddings: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """[N, M, D] embeddings, [M, C, D] means and [M, D, D] precisions -> [N, M, C] squared Mahalanobis distances."""
    difference = np.asarray(embeddings, np.float64)[:, :, None, :] - means[None]
    return np.einsum("nmcd,mde,nmce->nmc", difference, precision, difference)


def flag_threshold(held_out_scores: np.ndarray) -> float:
    """The 95th percentile of held-out scores, placed midway between the highest score left unflagged and the
    next one up (past the maximum by half the top gap), so that a score moved by float rounding (another batch
    size) keeps its side; a slice is flagged when its score is above it."""
    order = np.sort(np.asarray(held_out_scores, np.float64))
    if len(order) < 2:
        raise ValueError(f"a threshold needs at least 2 held-out scores, got {len(order)}")
    kept = len(order) - math.floor(IN_DISTRIBUTION_FLAG_SHARE * len(order))  # slices below the threshold
    above = order[kept] if kept < len(order) else 2 * order[-1] - order[-2]
    return float((order[kept - 1] + above) / 2)


@dataclasses.dataclass(frozen=True, eq=False)
class OodModel:
    """Class-conditional Gaussians on each member's embedding: means [M, C, D] (classes in `classes` order),
    precisions [M, D, D]; fitted on `class_counts` training slices per class; `threshold` (None until
    `calibrated`) set on `held_out_slices` held-out slices, of which `held_out_flagged_share` lie above it, their
    scores' histogram (bin edges, counts) in `held_out_histogram`."""

    means: np.ndarray
    precision: np.ndarray
    classes: tuple[int, ...]
    class_counts: tuple[int, ...]
    threshold: float | None = None
    held_out_slices: int = 0
    held_out_flagged_share: float | None = None
    held_out_histogram: tuple[tuple[float, ...], tuple[int, ...]] | None = None

    @classmethod
    def fit(cls, embeddings: np.ndarray, any_labels: np.ndarray) -> OodModel:
        """Fit on training embeddings [N, M, D] and their `any` labels [N] (0/1); a class absent from the
        training slices has no Gaussian."""
        embeddings = np.asarray(embeddings, np.float64)
        any_labels = np.asarray(any_labels).reshape(-1)
        if embeddings.ndim != 3 or len(embeddings) != len(any_labels):
            raise ValueError(f"fit takes embeddings [N, M, D] and one label per slice, got {embeddings.shape} "
                             f"and {any_labels.shape}")
        classes = tuple(int(c) for c in np.unique(any_labels))
        if not classes:
            raise ValueError("fit needs at least one training slice")
        members = np.arange(embeddings.shape[1])
        means = np.stack([embeddings[any_labels == c].mean(axis=0) for c in classes], axis=1)  # [M, C, D]
        class_index = np.searchsorted(classes, any_labels)
        centred = embeddings - means[members[None, :], class_index[:, None]]  # [N, M, D], each slice minus its class
        precision = np.stack([np.linalg.inv(shrunk_covariance(centred[:, m])) for m in members])
        counts = tuple(int(np.sum(any_labels == c)) for c in classes)
        return cls(means=means, precision=precision, classes=classes, class_counts=counts)

    def scores(self, embeddings: np.ndarray) -> np.ndarray:
        """[N, M, D] embeddings -> [N] scores: mean over members of the minimum over classes of the squared
        Mahalanobis distance."""
        return squared_distances(embeddings, self.means, self.precision).min(axis=2).mean(axis=1)

    def calibrated(self, held_out_embeddings: np.ndarray) -> OodModel:
        """This model with its threshold set on held-out (eval split) embeddings [N, M, D]."""
        scores = self.scores(held_out_embeddings)
        threshold = flag_threshold(scores)
        counts, edges = np.histogram(scores, bins=HISTOGRAM_BINS)
        return dataclasses.replace(self, threshold=threshold, held_out_slices=len(scores),
                                   held_out_flagged_share=float(np.mean(scores > threshold)),
                                   held_out_histogram=(tuple(map(float, edges)), tuple(map(int, counts))))

    def description(self) -> dict:
        """What the export's description records of this model (ich_model/description.py, `ood`)."""
        if self.threshold is None:
            raise ValueError("an OodModel is described once calibrated on held-out slices")
        return {
            "method": METHOD, "reference": REFERENCE, "classes_of": "any", "shrinkage": SHRINKAGE,
            "score": "mean over members of the minimum over classes of the squared Mahalanobis distance",
            "flag": "score above threshold", "threshold": self.threshold,
            "target_flagged_share": IN_DISTRIBUTION_FLAG_SHARE,
            "fitted_on": {"split": "train", "slices": int(sum(self.class_counts)),
                          "per_class": {str(c): n for c, n in zip(self.classes, self.class_counts, strict=True)}},
            "eval_slices": self.held_out_slices, "flagged_share_eval": self.held_out_flagged_share,
            "eval_histogram": {"edges": list(self.held_out_histogram[0]), "counts": list(self.held_out_histogram[1])},
        }
