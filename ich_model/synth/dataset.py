"""Synthetic head-CT studies written exactly as the RSNA 2019 download is laid out.

    DIR/stage_2_train/ID_<hex>.dcm      one axial slice per file
    DIR/stage_2_train.csv               ID,Label with six rows per image (ID_<hex>_<subtype>), RSNA order

Every study is planned up front from the seed (identifiers, storage profile, image size, whether it bleeds, the
nuisance ranges), then rendered on its own random stream, so the output is byte-for-byte the same for the same
seed whatever the number of worker processes. Everything but the blood is drawn per patient and per study from
`nuisance.TRAINING`, or with `shift` from `nuisance.SHIFTED`, whose every range lies outside training's.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ich_model.constants import LABELS, SUBTYPES
from ich_model.synth.anatomy import HeadShape, SliceGeometry, render_anatomy
from ich_model.synth.lesions import SUBTYPE_MIXES, draw_lesions, lesion_mask_visible, render_lesion
from ich_model.synth.nuisance import NUISANCE_RANGES, Nuisance
from ich_model.synth.scanner import (
    ODD_SHAPE_SHARE,
    ODD_SHAPES_AT_512,
    STORAGE_PROFILES,
    SeriesHeader,
    add_scanner_effects,
    apportion,
    rsna_id,
    write_slice,
)
from ich_model.synth.tissue import Tissue

IMAGES_DIR = "stage_2_train"
LABELS_CSV = "stage_2_train.csv"
# RSNA has 21,744 studies for 18,938 patients: some patients were scanned twice.
SECOND_STUDY_SHARE = 0.12
# RSNA: 40.8% of training studies show a haemorrhage.
DEFAULT_POSITIVE_FRACTION = 0.4
WINDOW_PRESETS = ((36.0, 80.0), (40.0, 80.0), (35.0, 100.0), (30.0, 80.0), (47.0, 120.0))


@dataclass(frozen=True)
class StudyPlan:
    """Everything that identifies a study, decided before any pixel is drawn."""

    index: int
    patient_id: str
    study_uid: str
    series_uid: str
    image_ids: tuple[str, ...]
    patient_seed: int  # head anatomy: shared by a patient's studies
    study_seed: int  # pose, scanner, texture, lesions
    profile_index: int
    shape: tuple[int, int]
    bleeding: bool
    subtype_mix: str = "rsna"
    nuisance: str = "training"  # which of NUISANCE_RANGES everything but the blood is drawn from


@dataclass
class RenderedSlice:
    image_id: str
    position: tuple[float, float, float]
    hu: np.ndarray  # what the scanner measured (with noise and artefacts), float32
    stored: np.ndarray  # the pixel values written to the file
    tissue: np.ndarray  # ground-truth dominant tissue (Tissue codes)
    pure: np.ndarray  # True away from partial-volume edges
    blood: dict[str, np.ndarray]  # per subtype, fraction of each pixel that is its blood
    labels: frozenset[str]

    @property
    def label_vector(self) -> list[int]:
        any_blood = bool(self.labels)
        return [int(name in self.labels) for name in SUBTYPES] + [int(any_blood)]


@dataclass
class RenderedStudy:
    plan: StudyPlan
    head: HeadShape
    scan: Nuisance
    pixel_mm: float
    orientation: tuple[float, ...]  # ImageOrientationPatient: row and column direction cosines
    slices: list[RenderedSlice]


@dataclass
class SynthSummary:
    out_dir: Path
    patients: int
    studies: int
    slices: int
    positive_slices: Counter = field(default_factory=Counter)
    profiles: Counter = field(default_factory=Counter)
    shapes: Counter = field(default_factory=Counter)


SlicesPerStudy = int | tuple[int, int]  # a study length, or the range (inclusive) each study's is drawn from


def parse_slices_per_study(text: str) -> SlicesPerStudy:
    """`12` or `24-40` (RSNA's studies hold about 24 to 60 slices) -> 12 or (24, 40)."""
    low, dash, high = text.partition("-")
    try:
        value = (int(low), int(high)) if dash else int(low)
    except ValueError:
        raise ValueError(f"--slices-per-study must be a count or a range such as 24-40, got {text!r}") from None
    return value


def length_range(slices_per_study: SlicesPerStudy) -> tuple[int, int]:
    return slices_per_study if isinstance(slices_per_study, tuple) else (slices_per_study, slices_per_study)


def validate_arguments(patients: int, slices_per_study: SlicesPerStudy, size: int, positive_fraction: float,
                       subtype_mix: str = "rsna") -> None:
    if patients < 1:
        raise ValueError(f"--patients must be at least 1, got {patients}")
    low, high = length_range(slices_per_study)
    if low < 1:
        raise ValueError(f"--slices-per-study must be at least 1, got {low}")
    if high < low:
        raise ValueError(f"--slices-per-study: a range runs from low to high, got {low}-{high}")
    if not 64 <= size <= 1024:
        raise ValueError(f"--size must be between 64 and 1024 pixels, got {size}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"--positive-fraction must be between 0 and 1, got {positive_fraction}")
    if subtype_mix not in SUBTYPE_MIXES:
        raise ValueError(f"--subtype-mix must be one of {', '.join(SUBTYPE_MIXES)}, got {subtype_mix!r}")


def plan_studies(patients: int, slices_per_study: SlicesPerStudy, seed: int, size: int = 512,
                 positive_fraction: float = DEFAULT_POSITIVE_FRACTION, subtype_mix: str = "rsna",
                 shift: bool = False) -> list[StudyPlan]:
    """The studies of a set; with `shift`, everything but the blood is drawn from the shifted ranges, and the
    identifiers from another stream than the training set of the same seed (the two sets can be pooled). A range
    of slices per study draws each study's length from a stream of its own, so that a fixed length gives the
    same set as before ranges existed."""
    validate_arguments(patients, slices_per_study, size, positive_fraction, subtype_mix)
    nuisance = "shifted" if shift else "training"
    rng = np.random.default_rng([seed, 1] if shift else seed)
    patient_of_study = [p for p in range(patients) for _ in range(1 + int(rng.random() < SECOND_STUDY_SHARE))]
    n = len(patient_of_study)
    profiles = apportion([p.share for p in STORAGE_PROFILES], n, rng)
    odd = apportion([1.0 - ODD_SHAPE_SHARE, ODD_SHAPE_SHARE], n, rng)
    bleeding = apportion([1.0 - positive_fraction, positive_fraction], n, rng)
    taken: set[str] = set()
    patient_ids = [rsna_id(rng, 9, taken) for _ in range(patients)]
    patient_seeds = rng.integers(0, 2**63, size=patients)
    low, high = length_range(slices_per_study)
    lengths = np.random.default_rng([seed, 2, int(shift)]).integers(low, high + 1, size=n)
    plans = []
    for i, patient in enumerate(patient_of_study):
        if odd[i]:
            rows, cols = ODD_SHAPES_AT_512[int(rng.integers(len(ODD_SHAPES_AT_512)))]
            shape = (max(round(rows * size / 512), 32), max(round(cols * size / 512), 32))
        else:
            shape = (size, size)
        plans.append(StudyPlan(
            index=i,
            patient_id=patient_ids[patient],
            study_uid=rsna_id(rng, 10, taken),
            series_uid=rsna_id(rng, 10, taken),
            image_ids=tuple(rsna_id(rng, 9, taken) for _ in range(int(lengths[i]))),
            patient_seed=int(patient_seeds[patient]),
            study_seed=int(rng.integers(0, 2**63)),
            profile_index=int(profiles[i]),
            shape=shape,
            bleeding=bool(bleeding[i]),
            subtype_mix=subtype_mix,
            nuisance=nuisance,
        ))
    return plans


def render_study(plan: StudyPlan) -> RenderedStudy:
    """Render every slice of a planned study, from skull base to vertex."""
    ranges = NUISANCE_RANGES[plan.nuisance]
    head = HeadShape.draw(np.random.default_rng(plan.patient_seed), ranges)
    rng = np.random.default_rng(plan.study_seed)
    scan = Nuisance.draw(rng, ranges)
    rows, cols = plan.shape
    # The technologist frames the whole head: the field of view is widened for a head it would cut.
    field_of_view = max(scan.field_of_view_mm, 2.0 * (head.reach_mm() + scan.centre_offset_mm) + 4.0)
    pixel_mm = field_of_view / min(rows, cols)
    centre = scan.centre_mm
    geom = SliceGeometry.for_grid(rows, cols, pixel_mm, centre, np.deg2rad(scan.rotation_deg))
    n = len(plan.image_ids)
    head_height = scan.head_height_mm
    z_fraction = np.linspace(0.03, 0.97, n) if n > 1 else np.array([0.5])
    slice_mm = 0.94 * head_height / (n - 1) if n > 1 else 5.0
    lesions = draw_lesions(rng, z_fraction, slice_mm, plan.subtype_mix) if plan.bleeding else []
    profile = STORAGE_PROFILES[plan.profile_index]
    yy, xx = np.mgrid[0:rows, 0:cols]
    outside_fov = np.hypot(yy - (rows - 1) / 2, xx - (cols - 1) / 2) > min(rows, cols) / 2
    tilt = np.deg2rad(scan.gantry_tilt_deg)
    row_dir = np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, np.cos(tilt), -np.sin(tilt)])
    normal = np.cross(row_dir, col_dir)
    origin = np.array([-(cols / 2) * pixel_mm + centre[0], -(rows / 2) * pixel_mm + centre[1], 0.0])
    table_mm = rng.uniform(-200.0, 50.0)
    slices = []
    for k, image_id in enumerate(plan.image_ids):
        u = float(z_fraction[k])
        anatomy = render_anatomy(head, geom, u, rng, scan)
        layers = anatomy.layers
        blood = {name: np.zeros((rows, cols), np.float32) for name in SUBTYPES}
        for lesion in lesions:
            fraction, oedema = render_lesion(lesion, k, u, head, geom, anatomy)
            if not lesion_mask_visible(fraction):
                continue
            if oedema is not None:
                layers.paint(oedema, layers.hu - lesion.params["oedema_drop_hu"], Tissue.OEDEMA)
            layers.paint(fraction, lesion.blood_hu, Tissue.BLOOD)
            blood[lesion.subtype] = np.maximum(blood[lesion.subtype], fraction)
        labels = frozenset(name for name, mask in blood.items() if lesion_mask_visible(mask))
        hu = add_scanner_effects(layers.hu, layers.tissue == Tissue.BONE, rng, scan, pixel_mm, skull_base=u < 0.24)
        position = origin + (table_mm + u * head_height) * normal
        slices.append(RenderedSlice(
            image_id=image_id,
            position=tuple(float(v) for v in position),
            hu=hu,
            stored=profile.encode(hu, outside_fov),
            tissue=layers.tissue,
            pure=layers.pure,
            blood=blood,
            labels=labels,
        ))
    return RenderedStudy(plan, head, scan, pixel_mm, (*row_dir, *col_dir), slices)


def series_header(study: RenderedStudy) -> SeriesHeader:
    plan = study.plan
    rng = np.random.default_rng(plan.study_seed ^ 0x5EED)
    centre, width = WINDOW_PRESETS[int(rng.integers(len(WINDOW_PRESETS)))]
    copies = 2 if rng.random() < 0.5 else 1  # RSNA: about half the files repeat the window values
    return SeriesHeader(
        patient_id=plan.patient_id,
        study_uid=plan.study_uid,
        series_uid=plan.series_uid,
        rows=plan.shape[0],
        cols=plan.shape[1],
        pixel_mm=study.pixel_mm,
        profile=STORAGE_PROFILES[plan.profile_index],
        orientation=study.orientation,
        window_center=[centre] * copies,
        window_width=[width] * copies,
    )


def write_study(plan: StudyPlan, images_dir: Path) -> list[tuple[str, list[int]]]:
    """Render and write one study; returns (image_id, label vector) per slice."""
    study = render_study(plan)
    header = series_header(study)
    for s in study.slices:
        write_slice(images_dir / f"{s.image_id}.dcm", header, s.image_id, s.position, s.stored)
    return [(s.image_id, s.label_vector) for s in study.slices]


def _write_study_task(args: tuple[StudyPlan, Path]) -> tuple[StudyPlan, list[tuple[str, list[int]]]]:
    plan, images_dir = args
    return plan, write_study(plan, images_dir)


def generate_dataset(out_dir: str | os.PathLike, patients: int, slices_per_study: SlicesPerStudy, seed: int,
                     size: int = 512, positive_fraction: float = DEFAULT_POSITIVE_FRACTION,
                     subtype_mix: str = "rsna", workers: int | None = None, progress: bool = True,
                     shift: bool = False) -> SynthSummary:
    """Write a synthetic RSNA-format set to `out_dir` and return what it holds; with `shift`, the shifted set
    (every nuisance parameter from outside the training ranges, `nuisance.SHIFTED`). With more than one worker
    the writers are spawned processes, which import the calling script: call this under
    `if __name__ == "__main__":` in a script."""
    from tqdm import tqdm

    plans = plan_studies(patients, slices_per_study, seed, size, positive_fraction, subtype_mix, shift)
    out = Path(out_dir)
    images_dir = out / IMAGES_DIR
    if (out / LABELS_CSV).exists() or (images_dir.exists() and any(images_dir.iterdir())):
        raise FileExistsError(f"{out} already holds an RSNA-format set; choose an empty folder")
    images_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(workers or os.cpu_count() or 1, len(plans)))
    labels: dict[int, list[tuple[str, list[int]]]] = {}
    tasks = [(plan, images_dir) for plan in plans]
    total = sum(len(plan.image_ids) for plan in plans)
    with tqdm(total=total, unit="slice", desc="ich synth", disable=not progress) as bar:
        if workers == 1:
            results = map(_write_study_task, tasks)
            pool = None
        else:
            # Spawned, not forked: a fork copies the caller's locks but not its threads, and a caller that ran
            # TensorFlow (a test, a notebook) can hand a worker a tf.data lock that is never released (seen: a
            # worker hung in a garbage-collected iterator's destructor).
            pool = multiprocessing.get_context("spawn").Pool(workers)
            results = pool.imap_unordered(_write_study_task, tasks)
        try:
            for plan, rows in results:
                labels[plan.index] = rows
                bar.update(len(rows))
        finally:
            if pool is not None:
                pool.close()
                pool.join()

    summary = SynthSummary(out_dir=out, patients=patients, studies=len(plans), slices=0)
    image_rows = [row for plan in plans for row in labels[plan.index]]
    np.random.default_rng(seed).shuffle(image_rows)  # RSNA's CSV is not grouped by study
    with open(out / LABELS_CSV, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ID", "Label"])
        for image_id, vector in image_rows:
            for name, value in zip(LABELS, vector, strict=False):
                writer.writerow([f"{image_id}_{name}", value])
            summary.positive_slices.update(name for name, value in zip(LABELS, vector, strict=False) if value)
    summary.slices = len(image_rows)
    for plan in plans:
        summary.profiles[STORAGE_PROFILES[plan.profile_index].name] += 1
        summary.shapes[f"{plan.shape[0]}x{plan.shape[1]}"] += 1
    return summary
