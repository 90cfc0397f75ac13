"""A head phantom in Hounsfield units: scalp, skull, CSF, grey and white matter, ventricles, skull base.

Geometry is in millimetres in a head frame: x runs to the patient's left, y to the posterior (the image's
downward direction for a supine patient), z from the skull base (u = 0) to the vertex (u = 1). Every boundary
is drawn with partial-volume edges one pixel wide, so nothing has a perfectly hard edge that a model could key on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ich_model.synth.nuisance import TRAINING, Nuisance, NuisanceRanges
from ich_model.synth.tissue import Tissue, TissueLayers

AIR_HU = -1000.0
# A pixel counts as a dense structure (calcification, bone fragment, vertex bone) in the tissue map where that
# structure raises it by at least this much: a small dense speck is visible long before it fills a pixel.
VISIBLE_RISE_HU = 15.0
# How far in height (u) a small structure reaches on either side of its centre: about one 5 mm slice.
SMALL_STRUCTURE_HALF_HEIGHT = 0.045


@functools.lru_cache(maxsize=64)
def _cubic_upsampling(coarse: int, fine: int) -> np.ndarray:
    """The (fine x coarse) matrix that resamples along one axis as `ndimage.zoom(order=3, mode="mirror")` does,
    so that a 2D zoom is two small matrix products (the spline is separable)."""
    unit = np.eye(coarse)
    columns = [ndimage.zoom(unit[j], fine / (coarse - 3), order=3, mode="mirror")[:fine] for j in range(coarse)]
    return np.stack(columns, axis=1).astype(np.float32)


def _standardised(field: np.ndarray) -> np.ndarray:
    field = field - field.mean()
    return field / (field.std() + 1e-6)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], correlation_px: float) -> np.ndarray:
    """Gaussian random field with unit variance and roughly `correlation_px` correlation length."""
    factor = max(correlation_px, 1.0)
    low = (max(int(np.ceil(shape[0] / factor)) + 3, 4), max(int(np.ceil(shape[1] / factor)) + 3, 4))
    coarse = rng.standard_normal(low).astype(np.float32)
    return _standardised(_cubic_upsampling(low[0], shape[0]) @ coarse @ _cubic_upsampling(low[1], shape[1]).T)


def brain_texture(model: str, rng: np.random.Generator, geom: SliceGeometry, correlation_mm: float) -> np.ndarray:
    """A unit-variance texture field over the slice, of one of the models `NuisanceRanges.brain_textures` names."""
    shape, correlation_px = geom.x.shape, correlation_mm / geom.pixel_mm
    if model == "gaussian":  # one scale
        return smooth_field(rng, shape, correlation_px)
    if model == "fractal":  # several octaves, finer ones weaker: closer to a 1/f spectrum
        return _standardised(sum(0.6**k * smooth_field(rng, shape, correlation_px / 2**k) for k in range(3)))
    if model == "gyral":  # long radially, short along the cortex: folds that run in from the surface
        return _gyral_field(rng, geom, correlation_mm)
    if model == "cellular":  # distance to the nearest of scattered seeds: blotchy cells, not a Gaussian field
        seeds = np.zeros(shape, dtype=bool)
        count = max(int(shape[0] * shape[1] / correlation_px**2), 1)
        seeds[rng.integers(0, shape[0], count), rng.integers(0, shape[1], count)] = True
        return _standardised(ndimage.distance_transform_edt(~seeds).astype(np.float32))
    raise ValueError(f"unknown brain texture model {model!r}")


def _gyral_field(rng: np.random.Generator, geom: SliceGeometry, correlation_mm: float) -> np.ndarray:
    """White noise on a polar grid (1 mm by 0.5 degree) smoothed over three correlation lengths radially and one
    along a 60 mm circle, read back at each pixel's nearest grid point."""
    radii, angles = int(np.ceil(float(geom.rho.max()))) + 1, 720
    sigma = (1.5 * correlation_mm, 0.5 * correlation_mm * angles / (2 * np.pi * 60.0))  # a Gaussian's sd is half
    polar = ndimage.gaussian_filter(rng.standard_normal((radii, angles), dtype=np.float32), sigma,
                                    mode=("nearest", "wrap"))
    r = np.minimum(np.rint(geom.rho).astype(np.intp), radii - 1)
    t = np.rint((geom.theta + np.pi) * (angles / (2 * np.pi))).astype(np.intp) % angles
    return _standardised(polar[r, t])


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


CALCIFICATION_SITES = ("pineal", "choroid plexus", "falx", "basal ganglia")


@dataclass(frozen=True)
class Calcification:
    """A physiological calcification: where, how dense, how big. Choroid plexus and basal ganglia are paired."""

    site: str  # one of CALCIFICATION_SITES
    hu: float
    radius_mm: float
    u: float  # height of its centre
    offset_mm: tuple[float, float]  # displacement from the site's usual place


@dataclass(frozen=True)
class BoneFragment:
    """A bit of skull-base bone (clinoid process, petrous apex) cut by a slice inside the cranial cavity."""

    hu: float
    radius_mm: float
    u: float
    position: tuple[float, float]  # (x, y) as fractions of the slice's semi-axes


@dataclass(frozen=True)
class HeadShape:
    """One patient's head: size, outline, skull, tissue densities and the dense structures that are not blood,
    drawn once per patient from `NuisanceRanges` (a patient's two studies share them)."""

    half_width_mm: float  # left-right semi-axis of the outer table at the widest slice
    aspect: float  # anterior-posterior over left-right semi-axis
    outline_harmonics: tuple[tuple[float, float], ...]  # (amplitude, phase) for harmonics 2, 3, ...
    skull_mm: float
    diploe_hu: float
    cortical_hu: float
    scalp_mm: float  # 0: no scalp in the image
    fat_hu: float
    soft_tissue_hu: float
    grey_hu: float
    white_hu: float
    csf_hu: float
    atrophy: float  # scales ventricles, sulci and the subarachnoid space; > 1 for atrophy / hydrocephalus
    csf_rim_mm: float  # subarachnoid space between the inner table and the cortex, before atrophy
    calcifications: tuple[Calcification, ...]
    venous_sinus_hu: float
    bone_fragments: tuple[BoneFragment, ...]
    vertex_partial_volume: float

    @classmethod
    def draw(cls, rng: np.random.Generator, ranges: NuisanceRanges = TRAINING) -> HeadShape:
        grey = ranges.grey_matter_hu.draw(rng)
        shares = dict(zip(CALCIFICATION_SITES, (
            ranges.pineal_calcification_share, ranges.choroid_plexus_calcification_share,
            ranges.falx_calcification_share, ranges.basal_ganglia_calcification_share), strict=True))
        heights = {"pineal": (0.33, 0.39), "choroid plexus": (0.44, 0.54), "falx": (0.5, 0.85),
                   "basal ganglia": (0.33, 0.43)}
        calcifications = tuple(
            Calcification(site, ranges.calcification_hu.draw(rng), float(rng.uniform(1.2, 3.5)),
                          float(rng.uniform(*heights[site])), tuple(float(v) for v in rng.normal(0.0, 1.5, 2)))
            for site in CALCIFICATION_SITES if rng.random() < shares[site])
        fragments = tuple(
            BoneFragment(ranges.bone_fragment_hu.draw(rng), float(rng.uniform(0.8, 2.2)),
                         float(rng.uniform(0.06, 0.22)),
                         (float(rng.choice([-1.0, 1.0]) * rng.uniform(0.15, 0.45)), float(rng.uniform(-0.25, 0.25))))
            for _ in range(int(rng.integers(1, 4)) if rng.random() < ranges.bone_fragment_share else 0))
        return cls(
            half_width_mm=ranges.half_width_mm.draw(rng),
            aspect=ranges.aspect.draw(rng),
            outline_harmonics=tuple((ranges.outline_irregularity.draw(rng), float(rng.uniform(0, 2 * np.pi)))
                                    for _ in range(4)),
            skull_mm=ranges.skull_mm.draw(rng),
            diploe_hu=ranges.diploe_hu.draw(rng),
            cortical_hu=ranges.cortical_hu.draw(rng),
            scalp_mm=0.0 if rng.random() < ranges.scalp_absent_share else ranges.scalp_mm.draw(rng),
            fat_hu=ranges.fat_hu.draw(rng),
            soft_tissue_hu=ranges.soft_tissue_hu.draw(rng),
            grey_hu=grey,
            white_hu=grey - ranges.grey_white_contrast_hu.draw(rng),
            csf_hu=ranges.csf_hu.draw(rng),
            atrophy=ranges.atrophy.draw(rng),
            csf_rim_mm=ranges.csf_rim_mm.draw(rng),
            calcifications=calcifications,
            venous_sinus_hu=ranges.venous_sinus_hu.draw(rng),
            bone_fragments=fragments,
            vertex_partial_volume=ranges.vertex_partial_volume.draw(rng),
        )

    @property
    def half_length_mm(self) -> float:
        return self.half_width_mm * self.aspect

    def outer_radius_mm(self, theta: np.ndarray, scale: float) -> np.ndarray:
        """Radius of the skull's outer surface along each angle, at a slice of relative cross-section `scale`."""
        a, b = self.half_width_mm * scale, self.half_length_mm * scale
        outline = np.ones_like(theta)
        for k, (amp, phase) in enumerate(self.outline_harmonics, start=2):
            outline += amp / (k - 1) * np.cos(k * theta + phase)  # finer lobes weaker: a skull, not a star
        return outline * a * b / np.sqrt((b * np.cos(theta)) ** 2 + (a * np.sin(theta)) ** 2)

    def scalp_thickness_mm(self, theta: np.ndarray, u: float) -> np.ndarray:
        return self.scalp_mm * (1.0 + 1.2 * np.cos(theta) ** 2 * (u < 0.6))  # temporalis muscle laterally

    def reach_mm(self) -> float:
        """Largest distance of the head's surface from its centre, over all heights and angles."""
        theta = np.linspace(-np.pi, np.pi, 721)
        return float(np.max(self.outer_radius_mm(theta, 1.0) + self.scalp_thickness_mm(theta, 0.0)))


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


def render_anatomy(head: HeadShape, geom: SliceGeometry, u: float, rng: np.random.Generator,
                   scan: Nuisance) -> Anatomy:
    """Render one axial slice at height u of a head, with the study's brain texture; no noise or lesions yet."""
    px = geom.pixel_mm
    x, y, theta = geom.x, geom.y, geom.theta
    scale = axial_scale(u)
    a, b = head.half_width_mm * scale, head.half_length_mm * scale
    cos_t = np.cos(theta)
    outer = head.outer_radius_mm(theta, scale)
    depth = outer - geom.rho  # depth below the outer surface of the skull

    # Skull: thinner over the temporal squama, thicker towards the base; dense tables around the diploe.
    thickness = head.skull_mm * (1.0 - 0.4 * cos_t**2) * (1.0 + 0.35 * max(0.3 - u, 0.0) / 0.3)
    thickness = thickness * np.clip(0.9 + 0.3 * scale, 0.8, 1.2)
    inner = outer - thickness
    intracranial_depth = depth - thickness

    layers = TissueLayers(shape=x.shape, background_hu=AIR_HU)
    if head.scalp_mm > 0:
        scalp = head.scalp_thickness_mm(theta, u)
        scalp_depth = depth + scalp
        fat = np.where(scalp_depth < 0.45 * scalp, head.fat_hu, head.soft_tissue_hu).astype(np.float32)
        layers.paint(soft_inside(scalp_depth, px), fat, Tissue.SCALP)

    through = np.clip(depth / np.maximum(thickness, 1e-3), 0.0, 1.0)
    tables = np.maximum(np.exp(-((through / 0.28) ** 2)), np.exp(-(((1.0 - through) / 0.28) ** 2)))
    bone_hu = head.diploe_hu + (head.cortical_hu - head.diploe_hu) * tables
    layers.paint(soft_inside(depth, px), bone_hu, Tissue.BONE)

    intracranial = soft_inside(intracranial_depth, px)
    rim = head.csf_rim_mm * head.atrophy
    layers.paint(intracranial, head.csf_hu, Tissue.CSF)

    # Brain: cortex ribbon of grey matter, then the study's texture model shaping the grey/white pattern, and
    # a second draw of it as mottle.
    brain_depth = intracranial_depth - rim
    pattern = brain_texture(scan.brain_texture, rng, geom, scan.texture_mm)
    white_weight = 1.0 / (1.0 + np.exp(-(pattern * 1.2 + (brain_depth - 9.0) / 3.0)))
    brain_hu = head.grey_hu + (head.white_hu - head.grey_hu) * white_weight
    mottle = np.clip(brain_texture(scan.brain_texture, rng, geom, scan.texture_mm), -2.5, 2.5)
    brain_hu = brain_hu + scan.texture_hu * mottle
    if 0.28 < u < 0.5:  # basal ganglia and thalami: deep grey nuclei
        for side in (-1.0, 1.0):
            nucleus = ellipse_depth(x, y, side * 0.22 * a, -0.02 * b, 0.09 * a, 0.16 * b, side * 0.3)
            brain_hu = np.where(nucleus > 0, head.grey_hu - 1.0 + scan.texture_hu * mottle, brain_hu)
    brain = soft_inside(brain_depth, px) * intracranial
    layers.paint(brain, brain_hu, Tissue.GREY_MATTER, where_tissue=np.where(white_weight > 0.5,
                                                                             Tissue.WHITE_MATTER,
                                                                             Tissue.GREY_MATTER))

    # Sulci: zero crossings of a random field within the outer centimetre or so of cortex, plus the
    # interhemispheric and Sylvian fissures.
    sulcal_field = smooth_field(rng, x.shape, 5.0 / px)
    sulcal_depth = 10.0 + 8.0 * head.atrophy
    sulci = np.clip(1.0 - np.abs(sulcal_field) / (0.14 + 0.1 * head.atrophy), 0.0, 1.0)
    sulci *= np.clip((sulcal_depth - brain_depth) / 4.0, 0.0, 1.0) * brain
    if u > 0.3:
        fissure = np.clip(1.0 - (np.abs(x) - 0.6 * head.atrophy) / px, 0.0, 1.0)
        fissure *= (np.abs(y) > 0.45 * b).astype(np.float32)
        sulci = np.maximum(sulci, fissure * brain)
    if 0.25 < u < 0.5:
        for side in (-1.0, 1.0):
            sylvian = segment_distance(x, y, (side * a, -0.05 * b), (side * 0.55 * a, -0.1 * b))
            sulci = np.maximum(sulci, soft_inside(1.0 * head.atrophy - sylvian, px) * brain)
    cisterns = np.zeros_like(x)
    if 0.18 < u < 0.32:
        ring = np.abs(np.hypot(x / 0.2, (y - 0.08 * b) / 0.18) - 0.08 * min(a, b) / 0.18)
        cisterns = soft_inside(2.2 * head.atrophy - ring, px) * brain
    layers.paint(np.maximum(sulci, cisterns), head.csf_hu, Tissue.CSF)

    ventricles = _ventricles(head, geom, u, a, b)
    for ventricle in ventricles:
        layers.paint(ventricle * brain, head.csf_hu, Tissue.CSF)
    midline = _midline_ventricles(head, geom, u, a, b)
    layers.paint(midline * brain, head.csf_hu, Tissue.CSF)

    if u < 0.24:
        _skull_base(layers, head, geom, u, a, b)
    dense = _dense_structures(layers, head, geom, u, a, b, intracranial_depth, intracranial)

    csf = np.maximum.reduce([sulci, cisterns, midline, *ventricles])
    return Anatomy(
        layers=layers,
        inner_radius_mm=inner,
        intracranial_depth_mm=intracranial_depth,
        intracranial=intracranial,
        sulci=sulci,
        cisterns=cisterns,
        ventricles=[v * brain for v in ventricles],
        parenchyma=np.clip(brain - csf - dense, 0.0, 1.0),
    )


def _paint_dense(layers: TissueLayers, coverage: np.ndarray, hu: float, tissue: Tissue) -> None:
    """Paint a structure denser than brain; it claims every pixel it raises visibly (`VISIBLE_RISE_HU`)."""
    layers.paint(coverage, hu, tissue, claim_above=min(0.5, VISIBLE_RISE_HU / max(hu - 40.0, 1.0)))


def _dense_structures(layers: TissueLayers, head: HeadShape, geom: SliceGeometry, u: float, a: float, b: float,
                      intracranial_depth: np.ndarray, intracranial: np.ndarray) -> np.ndarray:
    """Hyperdense structures that are not blood: dural venous sinuses, physiological calcifications, bone
    fragments at the skull base and partial-volume bone at the vertex. Returns the fraction of each pixel
    they cover."""
    px, x, y, e = geom.pixel_mm, geom.x, geom.y, intracranial_depth
    dense = np.zeros_like(x)

    def paint(coverage: np.ndarray, hu: float, tissue: Tissue) -> None:
        nonlocal dense
        coverage = coverage * intracranial
        _paint_dense(layers, coverage, hu, tissue)
        dense = np.maximum(dense, coverage)

    # Venous sinuses: superior sagittal (a triangle against the inner table on the midline), straight (on the
    # midline behind the tentorium's apex) and transverse (a band along the occipital inner table).
    if u > 0.35:
        paint(soft_inside(np.minimum(e, 4.0 * (1.0 - e / 6.0) - np.abs(x)), px), head.venous_sinus_hu,
              Tissue.VENOUS_SINUS)
    if 0.28 < u < 0.45:
        paint(soft_inside(ellipse_depth(x, y, 0.0, 0.62 * b, 3.0, 5.0), px), head.venous_sinus_hu, Tissue.VENOUS_SINUS)
    if 0.12 < u < 0.3:
        band = 4.5 * np.clip(1.0 - (np.angle(np.exp(1j * (geom.theta - np.pi / 2))) / 0.9) ** 2, 0.0, 1.0)
        paint(soft_inside(np.minimum(band - e, e), px) * (band > 0), head.venous_sinus_hu, Tissue.VENOUS_SINUS)

    for calc in head.calcifications:
        if abs(u - calc.u) > SMALL_STRUCTURE_HALF_HEIGHT:
            continue
        r, (dx, dy) = calc.radius_mm, calc.offset_mm
        if calc.site == "pineal":  # behind the third ventricle
            shape = ellipse_depth(x, y, dx, 0.14 * b + dy, r, r)
        elif calc.site == "falx":  # a plaque in the anterior falx, long front to back
            shape = ellipse_depth(x, y, 0.0, -0.45 * b + dy, 0.8, 3.0 * r)
        elif calc.site == "choroid plexus":  # in each atrium: 0.7 of the way back along the ventricle's body
            reach = 0.7 * (10.0 + 14.0 * 0.8) * head.atrophy
            shape = np.maximum.reduce([
                ellipse_depth(x, y, side * (0.09 * a + 3.0 * head.atrophy) - reach * np.sin(side * 0.3) + dx,
                              -0.08 * b + reach * np.cos(0.3) + dy, r, 1.3 * r)
                for side in (-1.0, 1.0)])
        else:  # basal ganglia: globus pallidus on both sides
            shape = np.maximum.reduce([ellipse_depth(x, y, side * 0.2 * a + dx, -0.05 * b + dy, r, 1.4 * r)
                                       for side in (-1.0, 1.0)])
        paint(soft_inside(shape, px), calc.hu, Tissue.CALCIFICATION)

    for fragment in head.bone_fragments:
        if abs(u - fragment.u) <= SMALL_STRUCTURE_HALF_HEIGHT:
            fx, fy = fragment.position
            paint(soft_inside(ellipse_depth(x, y, fx * a, fy * b, fragment.radius_mm, fragment.radius_mm), px),
                  fragment.hu, Tissue.BONE)

    # The vertex: the slab cuts the skull tangentially, so bone fills part of the slab over the brain, most
    # near the inner table and more the higher the slice.
    if u > 0.86:
        rise = min((u - 0.86) / 0.11, 1.0)
        share = head.vertex_partial_volume * rise * np.exp(-np.maximum(e, 0.0) / (2.0 + 8.0 * rise))
        paint(share.astype(np.float32), head.diploe_hu, Tissue.BONE)
    return dense


def lateral_ventricle_extent(u: float) -> float:
    """How open the lateral ventricles are at height u: 0 outside their z range, 1 at their widest."""
    return float(np.sin(np.pi * (u - 0.33) / 0.3)) if 0.33 < u < 0.63 else 0.0


def _ventricles(head: HeadShape, geom: SliceGeometry, u: float, a: float, b: float) -> list[np.ndarray]:
    """Left and right lateral ventricles: frontal horns and bodies, opening and closing along z."""
    extent = lateral_ventricle_extent(u)
    if extent <= 0:
        return []
    vs = head.atrophy
    masks = []
    for side in (-1.0, 1.0):
        body = ellipse_depth(geom.x, geom.y, side * (0.09 * a + 3.0 * vs), -0.08 * b,
                             (2.0 + 3.5 * extent) * vs, (10.0 + 14.0 * extent) * vs, side * 0.3)
        masks.append(soft_inside(body, geom.pixel_mm))
    return masks


def _midline_ventricles(head: HeadShape, geom: SliceGeometry, u: float, a: float, b: float) -> np.ndarray:
    """Third ventricle (a midline slit) and fourth ventricle (posterior fossa)."""
    vs = head.atrophy
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
