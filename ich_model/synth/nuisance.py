"""Everything in a synthetic study that is not blood, and the ranges it is drawn from.

A model trained on a generator with few nuisance parameters learns the generator: shown another phantom it
calls every slice a haemorrhage. So everything that real head CT varies between patients, scanners and
studies varies here too, per study, from the ranges below; only blood makes a label. `TRAINING` is what
`ich synth` draws; `SHIFTED` (`ich synth --shift`) draws every continuous parameter from outside its training
range and uses a brain texture and a noise texture that training never sees, while staying head CT in which the
blood is visible: a test of whether a model learnt the blood or the generator.

The patient's own anatomy (head, skull, tissue densities, calcifications, sinus density) is drawn once per
patient by `anatomy.HeadShape.draw`; the scanner, the pose and the texture per study by `Nuisance.draw`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Span:
    """A union of disjoint intervals, drawn uniformly over its total length."""

    intervals: tuple[tuple[float, float], ...]

    def draw(self, rng: np.random.Generator) -> float:
        if len(self.intervals) == 1:
            lo, hi = self.intervals[0]
        else:
            lengths = np.array([hi - lo for lo, hi in self.intervals])
            lo, hi = self.intervals[int(rng.choice(len(lengths), p=lengths / lengths.sum()))]
        return float(rng.uniform(lo, hi))

    def __contains__(self, value: float) -> bool:
        return any(lo <= value <= hi for lo, hi in self.intervals)

    def overlaps(self, other: Span) -> bool:
        return any(lo <= other_hi and other_lo <= hi
                   for lo, hi in self.intervals for other_lo, other_hi in other.intervals)


def between(lo: float, hi: float) -> Span:
    return Span(((lo, hi),))


def either_side(centre: float, near: float, far: float) -> Span:
    """Values at a distance between `near` and `far` from `centre`, on either side."""
    return Span(((centre - far, centre - near), (centre + near, centre + far)))


@dataclass(frozen=True)
class NuisanceRanges:
    """Where each nuisance parameter is drawn from; `Span`s in HU, mm, degrees or as noted."""

    name: str
    # Patient: head and skull.
    half_width_mm: Span  # outer table, left-right, at the widest slice: adult heads vary by about 20%
    aspect: Span  # length / width: round (brachycephalic) to long (dolichocephalic) skulls
    outline_irregularity: Span  # outline harmonics' amplitude (the k-th over k - 1): asymmetry, plagiocephaly
    skull_mm: Span  # vault thickness: thin in the elderly, thick with hyperostosis
    diploe_hu: Span  # bone density: osteoporotic to sclerotic
    cortical_hu: Span  # the dense inner and outer tables
    scalp_mm: Span  # soft tissue over the skull: thin scalp to swelling
    scalp_absent_share: float  # studies reconstructed or cropped to the skull
    # Patient: tissue densities (before the scanner's calibration).
    fat_hu: Span  # scalp fat
    soft_tissue_hu: Span  # scalp and temporalis muscle; oedematous to dense
    grey_matter_hu: Span  # grey matter varies with age, hydration and scanner energy
    grey_white_contrast_hu: Span  # grey minus white: poor differentiation (age, oedema, beam energy) to crisp
    csf_hu: Span  # CSF: water, raised by protein or by beam hardening in a small head
    atrophy: Span  # ventricle and sulcal size: young brains to atrophy and hydrocephalus
    csf_rim_mm: Span  # subarachnoid space between the inner table and the cortex
    # Patient: dense structures that are not blood, which a model must learn to ignore.
    calcification_hu: Span  # physiological calcification: faint to dense
    pineal_calcification_share: float  # adults: most pineal glands calcify
    choroid_plexus_calcification_share: float  # in the atria of the lateral ventricles
    falx_calcification_share: float  # dural plaques on the falx
    basal_ganglia_calcification_share: float  # globus pallidus, common in the elderly
    venous_sinus_hu: Span  # dense sinuses (haematocrit, dehydration): close to the blood range
    bone_fragment_share: float  # clinoid and petrous apex bone cut by the slice near the skull base
    bone_fragment_hu: Span  # partial-volume bone: a small fragment seldom reaches cortical density
    vertex_partial_volume: Span  # share of bone in the slab at the vertex, where the slice cuts the skull
    # Study: brain texture.
    brain_textures: tuple[str, ...]  # models of the grey/white pattern and parenchymal mottle
    texture_hu: Span  # mottle amplitude (sd) in brain
    texture_mm: Span  # correlation length of the texture
    # Study: scanner.
    hu_offset: Span  # calibration drift of the water value, applied to every pixel
    hu_scale: Span  # calibration slope about water
    noise_hu: Span  # quantum noise sd: dose, patient size, slice thickness
    noise_textures: tuple[str, ...]  # noise power spectrum: reconstruction kernel and iterative methods
    noise_grain_px: Span  # width of the noise's correlation (filtered) or of its removed low band (high-pass)
    sharpening: Span  # reconstruction kernel: < 0 smooth (blur), > 0 sharp (unsharp mask)
    cupping_hu: Span  # beam-hardening cupping: the centre of the head reads darker
    streak_extents: tuple[str, ...]  # streaks from the skull base only, or from anywhere (dense bone, metal)
    streak_count: Span  # per slice: whole counts from lo up to, not including, hi
    streak_hu: Span  # streak amplitude
    motion_share: float  # studies with patient motion
    motion_mm: Span  # length of the motion blur
    # Study: pose and field of view.
    field_of_view_mm: Span  # display field of view (pixel size): tight head FOV to a wide one
    centre_offset_mm: Span  # head off the centre of the image
    rotation_deg: Span  # in-plane rotation of the head
    gantry_tilt_share: float  # studies with a tilted gantry (header geometry)
    gantry_tilt_deg: Span  # tilted to spare the orbits
    head_height_mm: Span  # craniocaudal coverage of the study, skull base to vertex


TRAINING = NuisanceRanges(
    name="training",
    half_width_mm=between(63.0, 77.0),
    aspect=between(1.12, 1.36),
    outline_irregularity=between(0.0, 0.035),
    skull_mm=between(4.5, 8.5),
    diploe_hu=between(620.0, 950.0),
    cortical_hu=between(1300.0, 1800.0),
    scalp_mm=between(2.5, 7.5),
    scalp_absent_share=0.08,
    fat_hu=between(-110.0, -65.0),
    soft_tissue_hu=between(30.0, 55.0),
    grey_matter_hu=between(35.0, 42.0),
    grey_white_contrast_hu=between(5.5, 13.0),
    csf_hu=between(0.0, 14.0),
    atrophy=between(0.8, 1.6),
    csf_rim_mm=between(0.8, 1.6),
    calcification_hu=between(80.0, 450.0),
    pineal_calcification_share=0.6,
    choroid_plexus_calcification_share=0.5,
    falx_calcification_share=0.25,
    basal_ganglia_calcification_share=0.12,
    venous_sinus_hu=between(48.0, 70.0),
    bone_fragment_share=0.35,
    bone_fragment_hu=between(300.0, 1100.0),
    vertex_partial_volume=between(0.02, 0.12),
    brain_textures=("gaussian", "fractal", "gyral"),
    texture_hu=between(0.5, 2.5),
    texture_mm=between(3.0, 10.0),
    hu_offset=between(-8.0, 8.0),
    hu_scale=between(0.97, 1.03),
    noise_hu=between(2.0, 11.0),
    noise_textures=("white", "filtered"),
    noise_grain_px=between(0.5, 1.3),
    sharpening=between(-0.6, 0.6),
    cupping_hu=between(0.0, 6.0),
    streak_extents=("skull base", "everywhere"),
    streak_count=between(2.0, 8.0),
    streak_hu=between(3.0, 10.0),
    motion_share=0.15,
    motion_mm=between(0.8, 2.5),
    field_of_view_mm=between(215.0, 260.0),
    centre_offset_mm=between(0.0, 12.0),
    rotation_deg=between(-12.0, 12.0),
    gantry_tilt_share=0.15,
    gantry_tilt_deg=between(5.0, 20.0),
    head_height_mm=between(112.0, 138.0),
)

SHIFTED = NuisanceRanges(
    name="shifted",
    half_width_mm=Span(((55.0, 61.0), (79.0, 84.0))),
    aspect=Span(((1.0, 1.08), (1.4, 1.48))),
    outline_irregularity=between(0.045, 0.07),
    skull_mm=Span(((2.8, 4.0), (9.0, 11.0))),
    diploe_hu=between(430.0, 580.0),
    cortical_hu=between(1850.0, 2150.0),
    scalp_mm=between(8.5, 12.0),
    scalp_absent_share=0.4,
    fat_hu=Span(((-140.0, -120.0), (-55.0, -40.0))),
    soft_tissue_hu=Span(((18.0, 26.0), (60.0, 70.0))),
    grey_matter_hu=Span(((30.0, 33.5), (43.5, 46.0))),
    grey_white_contrast_hu=Span(((2.5, 4.5), (14.0, 16.0))),
    csf_hu=Span(((-6.0, -2.0), (16.0, 20.0))),
    atrophy=between(1.7, 2.0),
    csf_rim_mm=between(1.8, 2.4),
    calcification_hu=between(480.0, 900.0),
    pineal_calcification_share=0.9,
    choroid_plexus_calcification_share=0.85,
    falx_calcification_share=0.6,
    basal_ganglia_calcification_share=0.4,
    venous_sinus_hu=between(72.0, 80.0),
    bone_fragment_share=0.7,
    bone_fragment_hu=between(1200.0, 1600.0),
    vertex_partial_volume=between(0.15, 0.25),
    brain_textures=("cellular",),
    texture_hu=between(3.0, 4.5),
    texture_mm=between(12.0, 18.0),
    hu_offset=either_side(0.0, 10.0, 20.0),
    hu_scale=either_side(1.0, 0.045, 0.08),
    noise_hu=between(12.0, 20.0),
    noise_textures=("high-pass",),
    noise_grain_px=between(1.5, 2.2),
    sharpening=Span(((-1.0, -0.75), (0.8, 1.4))),
    cupping_hu=between(8.0, 14.0),
    streak_extents=("everywhere",),
    streak_count=between(9.0, 15.0),
    streak_hu=between(12.0, 22.0),
    motion_share=0.4,
    motion_mm=between(3.0, 4.5),
    field_of_view_mm=between(270.0, 320.0),
    centre_offset_mm=between(14.0, 26.0),
    rotation_deg=either_side(0.0, 15.0, 35.0),
    gantry_tilt_share=0.5,
    gantry_tilt_deg=between(22.0, 30.0),
    head_height_mm=Span(((100.0, 110.0), (140.0, 150.0))),
)

NUISANCE_RANGES = {ranges.name: ranges for ranges in (TRAINING, SHIFTED)}


@dataclass(frozen=True)
class Nuisance:
    """One study's scanner, pose and texture, drawn from `NuisanceRanges`; no draw is 0 unless absent."""

    brain_texture: str
    texture_hu: float
    texture_mm: float
    hu_offset: float
    hu_scale: float
    noise_hu: float
    noise_texture: str
    noise_grain_px: float
    sharpening: float
    cupping_hu: float
    streak_extent: str
    streak_count: int
    streak_hu: float
    motion_mm: float  # 0: the patient kept still
    motion_angle: float  # radians, in the image plane
    field_of_view_mm: float
    centre_offset_mm: float
    centre_angle: float  # radians: direction of the offset
    rotation_deg: float
    gantry_tilt_deg: float  # 0: no tilt
    head_height_mm: float

    @classmethod
    def draw(cls, rng: np.random.Generator, ranges: NuisanceRanges = TRAINING) -> Nuisance:
        def option(options: tuple[str, ...]) -> str:
            return options[int(rng.integers(len(options)))]

        return cls(
            brain_texture=option(ranges.brain_textures),
            texture_hu=ranges.texture_hu.draw(rng),
            texture_mm=ranges.texture_mm.draw(rng),
            hu_offset=ranges.hu_offset.draw(rng),
            hu_scale=ranges.hu_scale.draw(rng),
            noise_hu=ranges.noise_hu.draw(rng),
            noise_texture=option(ranges.noise_textures),
            noise_grain_px=ranges.noise_grain_px.draw(rng),
            sharpening=ranges.sharpening.draw(rng),
            cupping_hu=ranges.cupping_hu.draw(rng),
            streak_extent=option(ranges.streak_extents),
            streak_count=int(ranges.streak_count.draw(rng)),
            streak_hu=ranges.streak_hu.draw(rng),
            motion_mm=ranges.motion_mm.draw(rng) if rng.random() < ranges.motion_share else 0.0,
            motion_angle=float(rng.uniform(0.0, np.pi)),
            field_of_view_mm=ranges.field_of_view_mm.draw(rng),
            centre_offset_mm=ranges.centre_offset_mm.draw(rng),
            centre_angle=float(rng.uniform(0.0, 2 * np.pi)),
            rotation_deg=ranges.rotation_deg.draw(rng),
            gantry_tilt_deg=ranges.gantry_tilt_deg.draw(rng) if rng.random() < ranges.gantry_tilt_share else 0.0,
            head_height_mm=ranges.head_height_mm.draw(rng),
        )

    @property
    def centre_mm(self) -> tuple[float, float]:
        return (self.centre_offset_mm * float(np.cos(self.centre_angle)),
                self.centre_offset_mm * float(np.sin(self.centre_angle)))
