"""A head phantom in Hounsfield units: scalp, skull, CSF, grey and white matter, ventricles, skull base.

Geometry is in millimetres in a head frame: x runs to the patient's left, y to the posterior (the image's
downward direction for a supine patient), z from the skull base (u = 0) to the vertex (u = 1). Every boundary
is drawn with partial-volume edges one pixel wide, so nothing has a perfectly hard edge that a model could key on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ich_model.synth.tissue import Tissue, TissueLayers

# Intended Hounsfield ranges of the tissues (each patient draws its own value inside the range).
AIR_HU = -1000.0
FAT_HU = (-100.0, -70.0)
SOFT_TISSUE_HU = (35.0, 50.0)
DIPLOE_HU = (720.0, 900.0)
CORTICAL_BONE_HU = (1450.0, 1750.0)
CSF_HU = (3.0, 12.0)
GREY_MATTER_HU = (36.0, 41.0)
WHITE_MATTER_HU = (24.0, 30.0)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], correlation_px: float) -> np.ndarray:
    """Gaussian random field with unit variance and roughly `correlation_px` correlation length."""
    factor = max(correlation_px, 1.0)
    low = (max(int(np.ceil(shape[0] / factor)) + 3, 4), max(int(np.ceil(shape[1] / factor)) + 3, 4))
    coarse = rng.standard_normal(low).astype(np.float32)
    field = ndimage.zoom(coarse, (shape[0] / (low[0] - 3), shape[1] / (low[1] - 3)), order=3, mode="mirror")
    field = field[: shape[0], : shape[1]]
    field -= field.mean()
    return field / (field.std() + 1e-6)


def soft_inside(signed_depth_mm: np.ndarray, pixel_mm: float) -> np.ndarray:
    """Fraction of a pixel inside a region whose boundary is at depth 0 (positive depth = inside)."""
    return np.clip(0.5 + signed_depth_mm / pixel_mm, 0.0, 1.0)


def ellipse_depth(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float,
                  angle: float = 0.0) -> np.ndarray:
    """Approximate depth in mm inside an ellipse (negative outside), good to a pixel near its edge."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = x - cx, y - cy
    u = (c * dx + s * dy) / ax
    v = (-s * dx + c * dy) / ay
    radius = np.sqrt(u * u + v * v)
    return (1.0 - radius) * min(ax, ay)


def segment_distance(x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]):
    """Distance in mm from each point to the segment p0-p1."""
    px, py = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * px + (y - p0[1]) * py) / (px * px + py * py), 0.0, 1.0)
    return np.hypot(x - p0[0] - t * px, y - p0[1] - t * py)


@dataclass(frozen=True)
class HeadShape:
    """One patient's head: size, outline, skull thickness and tissue densities."""

    half_width_mm: float  # left-right semi-axis at the widest slice
    half_length_mm: float  # anterior-posterior semi-axis
    outline_harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) for harmonics 2, 3, ...
    skull_mm: float
    scalp_mm: float
    csf_rim_mm: float  # subarachnoid space between the inner table and the cortex
    ventricle_scale: float  # > 1 for atrophy / hydrocephalus
    sulcal_width: float
    grey_hu: float
    white_hu: float
    csf_hu: float
    soft_tissue_hu: float
    fat_hu: float
    diploe_hu: float
    cortical_hu: float

    @classmethod
    def draw(cls, rng: np.random.Generator) -> HeadShape:
        atrophy = rng.uniform(0.8, 1.6)
        return cls(
            half_width_mm=rng.uniform(66.0, 78.0),
            half_length_mm=rng.uniform(84.0, 98.0),
            outline_harmonics=tuple(
                (rng.uniform(0.0, 0.035), rng.uniform(0, 2 * np.pi)) for _ in range(4)
            ),
            skull_mm=rng.uniform(5.0, 8.0),
            scalp_mm=rng.uniform(3.5, 6.0),
            csf_rim_mm=rng.uniform(0.8, 1.6) * atrophy,
            ventricle_scale=atrophy,
            sulcal_width=0.14 + 0.1 * atrophy,
            grey_hu=rng.uniform(*GREY_MATTER_HU),
            white_hu=rng.uniform(*WHITE_MATTER_HU),
            csf_hu=rng.uniform(*CSF_HU),
            soft_tissue_hu=rng.uniform(*SOFT_TISSUE_HU),
            fat_hu=rng.uniform(*FAT_HU),
            diploe_hu=rng.uniform(*DIPLOE_HU),
            cortical_hu=rng.uniform(*CORTICAL_BONE_HU),
        )


def axial_scale(u: float) -> float:
    """Cross-section of the head relative to its widest slice, at height u (0 skull base, 1 vertex)."""
    if u < 0.45:
        return 0.86 + 0.14 * u / 0.45
    return float(np.sqrt(max(1.0 - ((u - 0.45) / 0.57) ** 2, 0.06)))


@dataclass
class SliceGeometry:
    """Head-frame coordinates of every pixel of one study's image grid (shared by all its slices)."""

    x: np.ndarray
    y: np.ndarray
    rho: np.ndarray
    theta: np.ndarray
    pixel_mm: float

    @classmethod
    def for_grid(cls, rows: int, cols: int, pixel_mm: float, centre_mm: tuple[float, float],
                 rotation: float) -> SliceGeometry:
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        x_img = (xx - (cols - 1) / 2) * pixel_mm - centre_mm[0]
        y_img = (yy - (rows - 1) / 2) * pixel_mm - centre_mm[1]
        c, s = np.cos(rotation), np.sin(rotation)
        x = (c * x_img + s * y_img).astype(np.float32)
        y = (-s * x_img + c * y_img).astype(np.float32)
        return cls(x=x, y=y, rho=np.hypot(x, y), theta=np.arctan2(y, x), pixel_mm=pixel_mm)


@dataclass
class Anatomy:
    """One rendered slice before lesions: HU image, tissue bookkeeping and the maps lesions are placed in."""

    layers: TissueLayers
    inner_radius_mm: np.ndarray  # radius of the inner table along each pixel's angle
    intracranial_depth_mm: np.ndarray  # depth below the inner table (negative outside the cranial cavity)
    intracranial: np.ndarray  # fraction of each pixel inside the cranial cavity
    sulci: np.ndarray  # fraction of each pixel that is sulcal / fissural CSF
    cisterns: np.ndarray  # fraction that is basal-cistern CSF
    ventricles: list[np.ndarray]  # per lateral ventricle (left, right), fraction of each pixel
    parenchyma: np.ndarray  # fraction that is brain tissue (not CSF, not bone)


def render_anatomy(head: HeadShape, geom: SliceGeometry, u: float, rng: np.random.Generator) -> Anatomy:
    """Render one axial slice at height u of a head; the result has no noise and no lesions yet."""
    px = geom.pixel_mm
    x, y, theta = geom.x, geom.y, geom.theta
    scale = axial_scale(u)
    a, b = head.half_width_mm * scale, head.half_length_mm * scale
    outline = np.ones_like(theta)
    for k, (amp, phase) in enumerate(head.outline_harmonics, start=2):
        outline += amp * np.cos(k * theta + phase)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    outer = outline * a * b / np.sqrt((b * cos_t) ** 2 + (a * sin_t) ** 2)
    depth = outer - geom.rho  # depth below the outer surface of the skull

    # Skull: thinner over the temporal squama, thicker towards the base; dense tables around the diploe.
    thickness = head.skull_mm * (1.0 - 0.4 * cos_t**2) * (1.0 + 0.35 * max(0.3 - u, 0.0) / 0.3)
    thickness = thickness * np.clip(0.9 + 0.3 * scale, 0.8, 1.2)
    inner = outer - thickness
    intracranial_depth = depth - thickness

    layers = TissueLayers(shape=x.shape, background_hu=AIR_HU)
    scalp = head.scalp_mm * (1.0 + 1.2 * cos_t**2 * (u < 0.6))  # temporalis muscle laterally
    scalp_depth = depth + scalp
    fat = np.where(scalp_depth < 0.45 * scalp, head.fat_hu, head.soft_tissue_hu).astype(np.float32)
    layers.paint(soft_inside(scalp_depth, px), fat, Tissue.SCALP)

    through = np.clip(depth / np.maximum(thickness, 1e-3), 0.0, 1.0)
    tables = np.maximum(np.exp(-((through / 0.28) ** 2)), np.exp(-(((1.0 - through) / 0.28) ** 2)))
    bone_hu = head.diploe_hu + (head.cortical_hu - head.diploe_hu) * tables
    layers.paint(soft_inside(depth, px), bone_hu, Tissue.BONE)

    intracranial = soft_inside(intracranial_depth, px)
    rim = head.csf_rim_mm
    layers.paint(intracranial, head.csf_hu, Tissue.CSF)

    # Brain: cortex ribbon of grey matter, then grey/white texture deeper in.
    brain_depth = intracranial_depth - rim
    texture = smooth_field(rng, x.shape, 7.0 / px)
    white_weight = 1.0 / (1.0 + np.exp(-(texture * 1.2 + (brain_depth - 9.0) / 3.0)))
    brain_hu = head.grey_hu + (head.white_hu - head.grey_hu) * white_weight
    if 0.28 < u < 0.5:  # basal ganglia and thalami: deep grey nuclei
        for side in (-1.0, 1.0):
            nucleus = ellipse_depth(x, y, side * 0.22 * a, -0.02 * b, 0.09 * a, 0.16 * b, side * 0.3)
            brain_hu = np.where(nucleus > 0, head.grey_hu - 1.0, brain_hu)
    brain = soft_inside(brain_depth, px) * intracranial
    layers.paint(brain, brain_hu, Tissue.GREY_MATTER, where_tissue=np.where(white_weight > 0.5,
                                                                             Tissue.WHITE_MATTER,
                                                                             Tissue.GREY_MATTER))

    # Sulci: zero crossings of a random field within the outer centimetre or so of cortex, plus the
    # interhemispheric and Sylvian fissures.
    sulcal_field = smooth_field(rng, x.shape, 5.0 / px)
    sulcal_depth = 10.0 + 8.0 * head.ventricle_scale
    sulci = np.clip(1.0 - np.abs(sulcal_field) / head.sulcal_width, 0.0, 1.0)
    sulci *= np.clip((sulcal_depth - brain_depth) / 4.0, 0.0, 1.0) * brain
    if u > 0.3:
        fissure = np.clip(1.0 - (np.abs(x) - 0.6 * head.ventricle_scale) / px, 0.0, 1.0)
        fissure *= (np.abs(y) > 0.45 * b).astype(np.float32)
        sulci = np.maximum(sulci, fissure * brain)
    if 0.25 < u < 0.5:
        for side in (-1.0, 1.0):
            sylvian = segment_distance(x, y, (side * a, -0.05 * b), (side * 0.55 * a, -0.1 * b))
            sulci = np.maximum(sulci, soft_inside(1.0 * head.ventricle_scale - sylvian, px) * brain)
    cisterns = np.zeros_like(x)
    if 0.18 < u < 0.32:
        ring = np.abs(np.hypot(x / 0.2, (y - 0.08 * b) / 0.18) - 0.08 * min(a, b) / 0.18)
        cisterns = soft_inside(2.2 * head.ventricle_scale - ring, px) * brain
    layers.paint(np.maximum(sulci, cisterns), head.csf_hu, Tissue.CSF)

    ventricles = _ventricles(head, geom, u, a, b)
    for ventricle in ventricles:
        layers.paint(ventricle * brain, head.csf_hu, Tissue.CSF)
    midline = _midline_ventricles(head, geom, u, a, b)
    layers.paint(midline * brain, head.csf_hu, Tissue.CSF)

    if u < 0.24:
        _skull_base(layers, head, geom, u, a, b)

    csf = np.maximum.reduce([sulci, cisterns, midline, *ventricles])
    return Anatomy(
        layers=layers,
        inner_radius_mm=inner,
        intracranial_depth_mm=intracranial_depth,
        intracranial=intracranial,
        sulci=sulci,
        cisterns=cisterns,
        ventricles=[v * brain for v in ventricles],
        parenchyma=np.clip(brain - csf, 0.0, 1.0),
    )


def lateral_ventricle_extent(u: float) -> float:
    """How open the lateral ventricles are at height u: 0 outside their z range, 1 at their widest."""
    return float(np.sin(np.pi * (u - 0.33) / 0.3)) if 0.33 < u < 0.63 else 0.0


def _ventricles(head: HeadShape, geom: SliceGeometry, u: float, a: float, b: float) -> list[np.ndarray]:
    """Left and right lateral ventricles: frontal horns and bodies, opening and closing along z."""
    extent = lateral_ventricle_extent(u)
    if extent <= 0:
        return []
    vs = head.ventricle_scale
    masks = []
    for side in (-1.0, 1.0):
        body = ellipse_depth(geom.x, geom.y, side * (0.09 * a + 3.0 * vs), -0.08 * b,
                             (2.0 + 3.5 * extent) * vs, (10.0 + 14.0 * extent) * vs, side * 0.3)
        masks.append(soft_inside(body, geom.pixel_mm))
    return masks


def _midline_ventricles(head: HeadShape, geom: SliceGeometry, u: float, a: float, b: float) -> np.ndarray:
    """Third ventricle (a midline slit) and fourth ventricle (posterior fossa)."""
    vs = head.ventricle_scale
    mask = np.zeros_like(geom.x)
    if 0.27 < u < 0.4:
        mask = np.maximum(mask, soft_inside(
            ellipse_depth(geom.x, geom.y, 0.0, 0.02 * b, 1.2 * vs, 0.1 * b), geom.pixel_mm))
    if 0.08 < u < 0.2:
        mask = np.maximum(mask, soft_inside(
            ellipse_depth(geom.x, geom.y, 0.0, 0.4 * b, 4.0 * vs, 2.5 * vs), geom.pixel_mm))
    return mask


def _skull_base(layers: TissueLayers, head: HeadShape, geom: SliceGeometry, u: float, a: float,
                b: float) -> None:
    """Petrous ridges with mastoid air cells and the sphenoid sinus, the sources of streak artefacts."""
    px = geom.pixel_mm
    low = (0.24 - u) / 0.24  # 1 at the skull base, 0 where the base ends
    for side in (-1.0, 1.0):
        ridge = segment_distance(geom.x, geom.y, (side * 0.85 * a, 0.3 * b), (side * 0.2 * a, 0.02 * b))
        layers.paint(soft_inside(1.0 + 5.0 * low - ridge, px), head.cortical_hu, Tissue.BONE)
        air_cells = ellipse_depth(geom.x, geom.y, side * 0.72 * a, 0.32 * b, 3.0 * low + 0.5, 2.0 * low + 0.5)
        layers.paint(soft_inside(air_cells, px), AIR_HU, Tissue.AIR)
    if u < 0.14:
        sinus = ellipse_depth(geom.x, geom.y, 0.0, -0.3 * b, 9.0, 7.0)
        layers.paint(soft_inside(sinus + 1.5, px), head.cortical_hu, Tissue.BONE)
        layers.paint(soft_inside(sinus, px), AIR_HU, Tissue.AIR)
