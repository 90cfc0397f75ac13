"""Painter's-algorithm compositing of tissues in Hounsfield units, with a record of what lies where."""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    """Dominant tissue of a pixel in the ground-truth map."""

    AIR = 0
    SCALP = 1
    BONE = 2
    CSF = 3
    GREY_MATTER = 4
    WHITE_MATTER = 5
    OEDEMA = 6
    BLOOD = 7
    CALCIFICATION = 8  # physiological: pineal, choroid plexus, falx, basal ganglia
    VENOUS_SINUS = 9  # dural venous sinus, as dense as some blood


class TissueLayers:
    """An HU image built by painting tissues over each other with fractional (partial-volume) coverage.

    `tissue` holds the tissue covering most of each pixel (or, for a dense structure painted with a lower
    `claim_above`, the structure wherever it shows); `pure` is False where a pixel mixes tissues, so that tests
    can check densities away from partial-volume edges.
    """

    def __init__(self, shape: tuple[int, int], background_hu: float):
        self.hu = np.full(shape, background_hu, dtype=np.float32)
        self.tissue = np.full(shape, Tissue.AIR, dtype=np.uint8)
        self.pure = np.ones(shape, dtype=bool)

    def paint(self, coverage: np.ndarray, hu, tissue: Tissue, where_tissue: np.ndarray | None = None,
              claim_above: float = 0.5) -> None:
        """Cover each pixel by `coverage` (0..1) of a tissue of density `hu` (scalar or per pixel); pixels
        covered by more than `claim_above` are recorded as that tissue."""
        coverage = np.asarray(coverage, dtype=np.float32)
        self.hu += coverage * (np.asarray(hu, dtype=np.float32) - self.hu)
        dominant = coverage > claim_above
        self.tissue[dominant] = tissue if where_tissue is None else where_tissue[dominant]
        self.pure[coverage > 0.98] = True  # fully covered: whatever mixed below is hidden
        self.pure[(coverage >= 0.02) & (coverage <= 0.98)] = False
