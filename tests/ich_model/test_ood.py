"""The OOD model (ich_model/ood.py) on synthetic Gaussians whose means and covariance are known: it recovers
them, in-distribution scores follow the chi-square of D dims, the held-out threshold flags its share, and a slice
far from both classes is flagged."""

from __future__ import annotations

import numpy as np
import pytest

from ich_model.ood import IN_DISTRIBUTION_FLAG_SHARE, SHRINKAGE, OodModel, flag_threshold

MEMBERS, DIMS = 2, 4


def gaussian_embeddings(rng, means, covariance, labels):
    """[N, M, D] samples, each slice from its class's Gaussian, per member."""
    noise = rng.multivariate_normal(np.zeros(DIMS), covariance, size=(len(labels), MEMBERS))
    return means[:, labels].transpose(1, 0, 2) + noise


@pytest.fixture(scope="module")
def known():
    rng = np.random.default_rng(3)
    means = rng.normal(0.0, 3.0, size=(MEMBERS, 2, DIMS))
    factor = rng.normal(size=(DIMS, DIMS))
    covariance = factor @ factor.T + np.eye(DIMS)
    labels = (rng.random(20_000) < 0.3).astype(int)
    return rng, means, covariance, labels


def test_fit_recovers_the_class_means_and_the_shrunk_tied_covariance(known):
    rng, means, covariance, labels = known
    model = OodModel.fit(gaussian_embeddings(rng, means, covariance, labels), labels)
    assert model.classes == (0, 1) and model.class_counts == (int(np.sum(labels == 0)), int(np.sum(labels == 1)))
    np.testing.assert_allclose(model.means, means, atol=0.1)
    shrunk = (1 - SHRINKAGE) * covariance + SHRINKAGE * np.diag(np.diag(covariance))
    for member in range(MEMBERS):
        np.testing.assert_allclose(np.linalg.inv(model.precision[member]), shrunk, rtol=0.1, atol=0.1)


def test_held_out_threshold_flags_its_share_and_a_far_slice(known):
    rng, means, covariance, labels = known
    model = OodModel.fit(gaussian_embeddings(rng, means, covariance, labels), labels)
    held_out = gaussian_embeddings(rng, means, covariance, labels[:2_000])
    # In distribution, a squared Mahalanobis distance to its own class is chi-square with D degrees of freedom
    # (a little less: the minimum over classes, and the shrinkage).
    assert 0.8 * DIMS < model.scores(held_out).mean() < 1.05 * DIMS
    calibrated = model.calibrated(held_out)
    assert calibrated.held_out_slices == 2_000
    assert calibrated.held_out_flagged_share == IN_DISTRIBUTION_FLAG_SHARE  # 100 of 2,000 above the threshold
    fresh = gaussian_embeddings(rng, means, covariance, labels[2_000:6_000])
    assert abs(np.mean(calibrated.scores(fresh) > calibrated.threshold) - IN_DISTRIBUTION_FLAG_SHARE) < 0.015
    far = means[:, :1].transpose(1, 0, 2) + 20.0  # 20 from every mean in every dimension
    assert calibrated.scores(far)[0] > 10 * calibrated.threshold
    described = calibrated.description()
    assert (described["eval_slices"], described["flagged_share_eval"]) == (2_000, 0.05)
    assert sum(described["eval_histogram"]["counts"]) == 2_000
    assert len(described["eval_histogram"]["edges"]) == len(described["eval_histogram"]["counts"]) + 1


@pytest.mark.parametrize("count, flagged", [(16, 0), (20, 1), (39, 1), (400, 20)])
def test_the_threshold_flags_at_most_the_share_and_sits_between_two_scores(count, flagged):
    scores = np.random.default_rng(count).random(count)
    threshold = flag_threshold(scores)
    assert np.sum(scores > threshold) == flagged
    assert not np.any(np.isclose(scores, threshold))  # midway: float rounding of a score does not move it across


def test_the_ood_module_imports_no_tensorflow():
    import subprocess
    import sys

    code = "import sys, ich_model.ood; print('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
