"""Acute haemorrhage in the five RSNA subtypes, each in its characteristic shape and place.

A lesion is a 3D object: it spans a run of contiguous slices, largest at its centre slice and shrinking towards
its ends (down to a few pixels), so small cross-sections occur naturally. Rendering returns, per slice, the
fraction of each pixel filled with blood; a slice carries a subtype's label exactly when that subtype's blood
covers at least `MIN_VISIBLE_PIXELS` pixels by half or more, and a cross-section below that is not drawn at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ich_model.synth.anatomy import (
    Anatomy,
    HeadShape,
    SliceGeometry,
    axial_scale,
    lateral_ventricle_extent,
    soft_inside,
)

MIN_VISIBLE_PIXELS = 4

# Relative frequency of each subtype among bleeding studies: RSNA's slice prevalences (SDH 6.3%, IPH 4.8%,
# SAH 4.7%, IVH 3.5%, EDH 0.42%) with epidural raised from 0.42 to 1.2 so that small demo sets still hold
# some epidural cases.
SUBTYPE_WEIGHTS = {
    "epidural": 1.2,
    "intraparenchymal": 4.8,
    "intraventricular": 3.5,
    "subarachnoid": 4.7,
    "subdural": 6.3,
}
# `rsna` mirrors the competition's mix; `balanced` gives every subtype the same chance, so that a small set's
# eval split still holds every subtype (per-subtype AUCs need positives).
SUBTYPE_MIXES = {
    "rsna": SUBTYPE_WEIGHTS,
    "balanced": {name: 1.0 for name in SUBTYPE_WEIGHTS},
}
# Where along the head (u = 0 skull base, 1 vertex) each subtype's centre may lie.
CENTRE_RANGE = {
    "epidural": (0.2, 0.8),
    "intraparenchymal": (0.25, 0.72),
    "intraventricular": (0.38, 0.58),
    "subarachnoid": (0.2, 0.75),
    "subdural": (0.22, 0.85),
}
BLOOD_HU = {
    "epidural": (65.0, 90.0),
    "intraparenchymal": (65.0, 90.0),
    "intraventricular": (58.0, 80.0),
    "subarachnoid": (58.0, 75.0),
    "subdural": (60.0, 85.0),
}


@dataclass
class Lesion:
    subtype: str
    centre_slice: float
    half_extent_slices: float
    blood_hu: float
    params: dict = field(default_factory=dict)

    def profile(self, k: int) -> float:
        """Relative size of the cross-section in slice k: 1 at the centre, 0 beyond the ends."""
        t = (k - self.centre_slice) / (self.half_extent_slices + 0.5)
        return float(np.sqrt(max(1.0 - t * t, 0.0)))


def draw_lesions(rng: np.random.Generator, z_fraction: np.ndarray, slice_mm: float,
                 subtype_mix: str = "rsna") -> list[Lesion]:
    """Lesions of one bleeding study: one to three subtypes (drawn by `SUBTYPE_MIXES[subtype_mix]`), one or two
    lesions each."""
    mix = SUBTYPE_MIXES[subtype_mix]
    names = list(mix)
    weights = np.array([mix[n] for n in names])
    count = min(1 + rng.poisson(0.6), 3)
    chosen = rng.choice(names, size=count, replace=False, p=weights / weights.sum())
    lesions = []
    for subtype in chosen:
        for _ in range(1 + int(rng.random() < 0.25)):
            lesions.append(_draw_one(rng, str(subtype), z_fraction, slice_mm))
    return lesions


def _draw_one(rng: np.random.Generator, subtype: str, z_fraction: np.ndarray, slice_mm: float) -> Lesion:
    lo, hi = CENTRE_RANGE[subtype]
    candidates = np.flatnonzero((z_fraction >= lo) & (z_fraction <= hi))
    if candidates.size == 0:  # very few slices: take the one closest to the range
        candidates = np.array([int(np.argmin(np.abs(z_fraction - (lo + hi) / 2)))])
    centre = float(rng.choice(candidates)) + rng.uniform(-0.4, 0.4)
    extent_mm = {"epidural": (8, 40), "intraparenchymal": (4, 40), "intraventricular": (6, 25),
                 "subarachnoid": (6, 45), "subdural": (15, 70)}[subtype]
    half = rng.uniform(*extent_mm) / 2 / slice_mm
    lesion = Lesion(subtype, centre, half, rng.uniform(*BLOOD_HU[subtype]))
    p = lesion.params
    if subtype == "epidural":  # mostly temporal/parietal, over the convexity
        p["angle"] = rng.choice([0.0, np.pi]) + rng.uniform(-0.9, 0.9)
        p["half_span"] = rng.uniform(0.25, 0.6)
        p["thickness_mm"] = rng.uniform(3.0, 18.0)
    elif subtype == "subdural":
        p["angle"] = rng.uniform(-np.pi, np.pi)
        p["half_span"] = rng.uniform(0.6, 1.4)
        p["thickness_mm"] = rng.uniform(1.5, 11.0)
    elif subtype == "subarachnoid":
        p["angle"] = rng.uniform(-np.pi, np.pi)
        p["half_span"] = rng.uniform(0.35, 1.2)
        p["cisternal"] = bool(rng.random() < 0.4)
    elif subtype == "intraparenchymal":
        p["angle"] = rng.uniform(-np.pi, np.pi)
        p["radial_fraction"] = rng.uniform(0.2, 0.62)
        p["radius_mm"] = rng.uniform(2.0, 22.0)
        p["harmonics"] = [(rng.uniform(0.0, 0.18), rng.uniform(0, 2 * np.pi)) for _ in range(4)]
        p["oedema_rim"] = rng.uniform(0.25, 0.6)
        p["oedema_drop_hu"] = rng.uniform(9.0, 15.0)
    elif subtype == "intraventricular":
        p["sides"] = [s for s in (0, 1) if rng.random() < 0.7] or [int(rng.integers(2))]
        p["fill_fraction"] = 1.0 if rng.random() < 0.15 else rng.uniform(0.2, 0.7)
    return lesion


def _angular_taper(theta: np.ndarray, centre: float, half_span: float, power: float) -> np.ndarray:
    """1 at `centre`, falling to 0 at +-half_span (angles wrap around)."""
    d = np.angle(np.exp(1j * (theta - centre)))
    return np.clip(1.0 - np.abs(d / half_span) ** 2, 0.0, 1.0) ** power


def render_lesion(lesion: Lesion, k: int, u: float, head: HeadShape, geom: SliceGeometry,
                  anatomy: Anatomy) -> tuple[np.ndarray, np.ndarray | None]:
    """Blood fraction of lesion `lesion` in slice k at height u, and for IPH its oedema fraction."""
    size = lesion.profile(k)
    zeros = np.zeros_like(geom.x)
    if size <= 0:
        return zeros, None
    p, px, e = lesion.params, geom.pixel_mm, anatomy.intracranial_depth_mm
    if lesion.subtype in ("epidural", "subdural"):
        # Epidural: biconvex lens (cosine profile); subdural: flat crescent tapering at its tips.
        power = 1.0 if lesion.subtype == "epidural" else 0.3
        taper = _angular_taper(geom.theta, p["angle"], p["half_span"] * np.sqrt(size), power)
        thickness = p["thickness_mm"] * size * taper
        blood = soft_inside(np.minimum(thickness - e, e), px) * (thickness > 0)
        return blood * anatomy.intracranial, None
    if lesion.subtype == "subarachnoid":
        taper = _angular_taper(geom.theta, p["angle"], p["half_span"], 0.5) * min(1.0, 1.5 * size)
        blood = anatomy.sulci * taper
        if p["cisternal"]:
            blood = np.maximum(blood, anatomy.cisterns * min(1.0, 2.0 * size))
        return blood, None
    if lesion.subtype == "intraparenchymal":
        scale = axial_scale(u)
        r = p["radial_fraction"]
        cx = r * head.half_width_mm * scale * np.cos(p["angle"])
        cy = r * head.half_length_mm * scale * np.sin(p["angle"])
        dx, dy = geom.x - cx, geom.y - cy
        angle = np.arctan2(dy, dx)
        outline = np.ones_like(angle)
        for n, (amp, phase) in enumerate(p["harmonics"], start=2):
            outline += amp * np.cos(n * angle + phase)
        radius = p["radius_mm"] * size * outline
        distance = np.hypot(dx, dy)
        inside_brain = anatomy.parenchyma + anatomy.sulci
        blood = soft_inside(radius - distance, px) * inside_brain
        oedema = soft_inside(radius * (1.0 + p["oedema_rim"]) - distance, px) * anatomy.parenchyma
        return blood, oedema
    if lesion.subtype == "intraventricular":
        extent = lateral_ventricle_extent(u)
        if extent <= 0:
            return zeros, None
        blood = zeros
        for side in p["sides"]:
            if side >= len(anatomy.ventricles):
                continue
            ventricle = anatomy.ventricles[side]
            rows = geom.y[ventricle > 0.5]
            if rows.size == 0:
                continue
            # Layering: blood settles in the dependent (posterior, +y) part of the ventricle.
            level = rows.max() - p["fill_fraction"] * (rows.max() - rows.min())
            blood = np.maximum(blood, ventricle * soft_inside(geom.y - level, px))
        return blood, None
    raise ValueError(f"unknown subtype {lesion.subtype!r}")


def lesion_mask_visible(blood: np.ndarray) -> bool:
    return int(np.count_nonzero(blood >= 0.5)) >= MIN_VISIBLE_PIXELS

