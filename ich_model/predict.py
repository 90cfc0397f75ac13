"""Scoring DICOM slices with an exported ensemble (`ich predict`).

The raw tf.Examples are built by the reader and the Example builder that the ExampleGen uses (ich_model.dicom,
ich_model.examples), slices placed in their study the same way, and scored by the SavedModel's
`serving_default`: training and serving cannot drift. A file that is not a usable CT slice is reported with its
reason and skipped. With an ensemble that ships an OOD model (ich_model/ood.py), each slice also gets its
out-of-distribution score and flag, and each study the median of its slices' scores and whether that median is
above the threshold: the median, so that a few unusual slices (skull base, vertex) do not flag a normal study.
Slices and studies are flagged per label at the model's operating points (ich_model/operating_points.py; the
default threshold for a model exported without them).
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ich_model.constants import LABELS
from ich_model.dicom import (
    DICM,
    PREAMBLE_LENGTH,
    DicomRejected,
    list_input_files,
    printable_path,
    read_header,
    read_slice,
)
from ich_model.examples import place_slices, slice_to_example
from ich_model.operating_points import LEVELS, SLICE_LEVEL, STUDY_LEVEL, flags, thresholds

FORMATS = ("rsna", "wide", "json")
FLAGGED_COLUMNS = tuple(f"{label}_flagged" for label in LABELS)


def dicom_candidates(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Every file named by `paths` or under the folders among them (any depth), in a stable order, as the
    ExampleGen lists its input; label CSVs left out."""
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        yield from (Path(name) for name in list_input_files(str(path)) if not name.lower().endswith(".csv"))


def output_paths(out: str | os.PathLike, output_format: str) -> list[Path]:
    """The files that write_predictions writes for `out`: the slices, and for the CSV formats the studies beside."""
    out = Path(out)
    return [out] if output_format == "json" else [out, out.with_name(f"{out.stem}_studies.csv")]


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    with open(path, "rb") as f:
        return f.read(PREAMBLE_LENGTH + len(DICM))[PREAMBLE_LENGTH:] == DICM


def refuse_overwrite(out: str | os.PathLike, output_format: str, overwrite: bool = False) -> None:
    """Before any scoring: FileExistsError if an output file of `out` exists, unless `overwrite`; and whatever
    `overwrite` says, if it is a folder or a DICOM file (an input named as the output)."""
    for path in output_paths(out, output_format):
        if path.is_dir():
            raise FileExistsError(f"--out {out}: {path} is a folder")
        if path.exists() and _is_dicom(path):
            raise FileExistsError(f"--out {out}: {path} is a DICOM file; ich predict never writes over one")
        if path.exists() and not overwrite:
            raise FileExistsError(f"--out {out}: {path} exists; pass --overwrite to replace it")


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str
    message: str


@dataclass
class Predictions:
    """Per slice (in study order): image and study IDs, probabilities and spread [N, 6] and each member's
    probabilities [N, M, 6]; with an OOD model (else None) its scores and flags [N] (the SavedModel's) and its
    threshold; and the skipped files."""

    image_ids: list[str] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)
    probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, len(LABELS)), np.float32))
    spread: np.ndarray = field(default_factory=lambda: np.zeros((0, len(LABELS)), np.float32))
    member_probabilities: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, len(LABELS)), np.float32))
    ood_scores: np.ndarray | None = None
    ood_flags: np.ndarray | None = None
    ood_threshold: float | None = None
    # With a study model (else None): the refined probabilities [N, 6] and, per study, its study head's [6].
    refined: np.ndarray | None = None
    study_heads: dict[str, np.ndarray] | None = None
    # The model's operating points per level ([6] thresholds in label order), and whether it chose them (False:
    # the default threshold stands in, as for a model exported before operating points).
    operating_thresholds: dict[str, np.ndarray] = field(default_factory=lambda: {
        level: thresholds({}, level) for level in LEVELS})
    operating_points_chosen: bool = False
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    explained: list[Path] = field(default_factory=list)  # Grad-CAM pictures written

    @property
    def answer(self) -> np.ndarray:
        """The slices' probabilities [N, 6] to act on: the refined ones of a study model, else the ensemble's."""
        return self.probabilities if self.refined is None else self.refined

    def studies(self) -> dict[str, np.ndarray]:
        """Per study, the slice ensemble's maximum probability of each label over its slices."""
        rows = defaultdict(list)
        for study, probabilities in zip(self.study_uids, self.probabilities, strict=True):
            rows[study].append(probabilities)
        return {study: np.max(values, axis=0) for study, values in sorted(rows.items())}

    def study_answer(self) -> dict[str, np.ndarray]:
        """Per study, its probabilities to act on: a study model's study head, else the slice maximum."""
        return self.studies() if self.study_heads is None else dict(self.study_heads)

    def slice_flags(self) -> np.ndarray:
        """[N, 6]: the labels each slice is flagged for at the slice operating points."""
        return flags(self.answer, self.operating_thresholds[SLICE_LEVEL])

    def study_flags(self) -> dict[str, np.ndarray]:
        """Per study, [6]: the labels it is flagged for at the study operating points."""
        return {study: flags(p, self.operating_thresholds[STUDY_LEVEL]) for study, p in self.study_answer().items()}

    def study_ood(self) -> dict[str, tuple[float, bool]] | None:
        """Per study, the median of its slices' OOD scores and whether it is above the threshold (None without an
        OOD model)."""
        if self.ood_scores is None:
            return None
        rows = defaultdict(list)
        for study, score in zip(self.study_uids, self.ood_scores, strict=True):
            rows[study].append(score)
        return {study: (float(np.median(scores)), bool(np.median(scores) > self.ood_threshold))
                for study, scores in sorted(rows.items())}


def _attempt(reader, path: Path, skipped: list[Skipped]):
    try:
        return reader(str(path))
    except DicomRejected as rejected:
        skipped.append(Skipped(printable_path(path), rejected.reason, rejected.message))
    except Exception as error:  # noqa: BLE001 - whatever a broken file makes a decoder raise is a skip
        skipped.append(Skipped(printable_path(path), "unreadable", f"{type(error).__name__}: {error}"))
    return None


def model_thresholds(model_dir: str | os.PathLike) -> tuple[dict[str, np.ndarray], bool]:
    """The operating points of the export at `model_dir` per level, and whether it chose them (an export without a
    description, or whose description has none, gets the default threshold)."""
    from ich_model.description import DescriptionError, read_description

    try:
        description = read_description(model_dir)
    except DescriptionError:
        description = {}
    return ({level: thresholds(description, level) for level in LEVELS},
            "operating_points" in description)


def predict(paths: Iterable[str | os.PathLike], model_dir: str | os.PathLike, batch_size: int = 32,
            progress: bool = True, explain_dir: str | os.PathLike | None = None,
            explain_threshold: float = 0.5, loaded=None) -> Predictions:
    """Score every usable CT slice under `paths` with the SavedModel in `model_dir`: a slice ensemble in batches
    of `batch_size` slices, a study model (ich_model.study_serving) one whole study at a time. With
    `explain_dir`, also write a Grad-CAM picture there for every slice and subtype whose ensemble probability
    reaches `explain_threshold` (ich_model.explain); the paths are in `Predictions.explained`. `loaded` is the
    SavedModel of `model_dir` when the caller has it loaded already (`ich serve` keeps it between studies)."""
    import tensorflow as tf
    from tqdm import tqdm

    from ich_model.serving import (
        MEMBER_PROBABILITIES,
        OOD_SCORE,
        OUT_OF_DISTRIBUTION,
        PROBABILITIES,
        SERVING_SIGNATURE,
        SPREAD,
        ood_threshold,
    )
    from ich_model.study_serving import REFINED_PROBABILITIES, STUDY_PROBABILITIES

    if batch_size < 1:
        raise ValueError(f"batch size {batch_size}: at least one slice per model call")
    result = Predictions()
    headers, first_file = {}, {}
    for path in dicom_candidates(paths):
        header = _attempt(read_header, path, result.skipped)
        if header is None:
            continue
        if header.image_id in first_file:  # one slice, one row: the ExampleGen rejects copies the same way
            result.skipped.append(Skipped(str(path), "duplicate_image", f"SOP Instance UID {header.image_id} is "
                                                                        f"also {first_file[header.image_id]}"))
            continue
        first_file[header.image_id] = path
        headers[path] = header
    by_study = defaultdict(list)
    for path, header in headers.items():
        by_study[header.study_uid].append((path, header))
    studies = []  # each study's (placement, path) along z, studies in UID order
    for study in sorted(by_study):
        placements = place_slices(header for _, header in by_study[study])
        studies.append(sorted(((placements[h.image_id], path) for path, h in by_study[study]),
                              key=lambda item: item[0].slice_index))
    ordered = [item for study in studies for item in study]
    if not ordered:
        return result  # nothing readable: no model to load

    model = loaded if loaded is not None else tf.saved_model.load(str(model_dir))
    serve = model.signatures[SERVING_SIGNATURE]
    result.ood_threshold = ood_threshold(model)
    result.operating_thresholds, result.operating_points_chosen = model_thresholds(model_dir)
    study_model = REFINED_PROBABILITIES in serve.structured_outputs
    # The study signature reads one whole study per call; a slice ensemble reads any batch of slices.
    batches = studies if study_model else [ordered[start:start + batch_size]
                                          for start in range(0, len(ordered), batch_size)]
    explainer = None
    if explain_dir is not None:
        from ich_model.explain import Explainer

        explainer = Explainer(model_dir, explain_dir, explain_threshold, loaded=model)
    probabilities, spread, members, ood_scores, ood_flags, refined = [], [], [], [], [], []
    heads = {}
    started = time.monotonic()
    with tqdm(total=len(ordered), unit="slice", desc="ich predict", disable=not progress) as bar:
        for slices in batches:
            batch, batch_ids, batch_studies = [], [], []
            for placement, path in slices:
                ct = _attempt(read_slice, path, result.skipped)
                if ct is not None:
                    batch.append(slice_to_example(ct, placement).SerializeToString())
                    batch_ids.append(ct.image_id)
                    batch_studies.append(ct.study_uid)
            if batch:
                outputs = serve(examples=tf.constant(batch))
                probabilities.append(outputs[PROBABILITIES].numpy())
                spread.append(outputs[SPREAD].numpy())
                members.append(outputs[MEMBER_PROBABILITIES].numpy())
                if result.ood_threshold is not None:
                    ood_scores.append(outputs[OOD_SCORE].numpy())
                    ood_flags.append(outputs[OUT_OF_DISTRIBUTION].numpy() > 0.5)
                if study_model:
                    refined.append(outputs[REFINED_PROBABILITIES].numpy())
                    heads[batch_studies[0]] = outputs[STUDY_PROBABILITIES].numpy()
                result.image_ids += batch_ids
                result.study_uids += batch_studies
                if explainer is not None:
                    explainer.explain(batch, batch_ids, probabilities[-1])
            bar.update(len(slices))
    result.seconds = time.monotonic() - started
    if explainer is not None:
        result.explained = explainer.written
    if probabilities:
        result.probabilities, result.spread = np.concatenate(probabilities), np.concatenate(spread)
        result.member_probabilities = np.concatenate(members)
    if study_model:
        result.refined = np.concatenate(refined) if refined else np.zeros((0, len(LABELS)), np.float32)
        result.study_heads = dict(sorted(heads.items()))
    if result.ood_threshold is not None:
        result.ood_scores = np.concatenate(ood_scores) if ood_scores else np.zeros(0, np.float32)
        result.ood_flags = np.concatenate(ood_flags) if ood_flags else np.zeros(0, bool)
    return result


def write_predictions(predictions: Predictions, out: str | os.PathLike, output_format: str) -> list[Path]:
    """Write the slices in `output_format` to `out` (and, for the CSV formats, the study summary beside it as
    `<name>_studies.csv`); returns the files written. The slices' probabilities are the model's answer
    (Predictions.answer): a study model's refined ones, whose slice ensemble's own go beside them
    (`<label>_slice_only`, `slice_only_probabilities`) and whose study head's give each study's probabilities
    (beside the slice maximum, `<label>_max`, `slice_max`). Slices (except in Kaggle's `rsna` rows) and studies
    carry what the operating points flag (`<label>_flagged` 0/1 in CSV, `flagged`: the labels in JSON, whose
    `operating_points` gives the thresholds). With an OOD model, the slices (except in `rsna` rows) carry
    `ood_score` and `out_of_distribution`, the studies `ood_score_median` and `out_of_distribution`; without one,
    those fields are absent."""
    from ich_model.serving import OOD_SCORE, OUT_OF_DISTRIBUTION

    if output_format not in FORMATS:
        raise ValueError(f"unknown format {output_format!r}; formats are {', '.join(FORMATS)}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    studies, study_ood, heads = predictions.studies(), predictions.study_ood(), predictions.study_heads
    slice_flags, study_flags = predictions.slice_flags(), predictions.study_flags()
    slice_only = ([None] * len(predictions.image_ids) if predictions.refined is None else
                  [p.round(6).tolist() for p in predictions.probabilities])
    study_score = f"{OOD_SCORE}_median"
    slice_ood = ([[] for _ in predictions.image_ids] if predictions.ood_scores is None else
                 [[(OOD_SCORE, round(float(score), 6)), (OUT_OF_DISTRIBUTION, bool(flag))]
                  for score, flag in zip(predictions.ood_scores, predictions.ood_flags, strict=True)])
    if output_format == "json":
        out.write_text(json.dumps({
            "labels": list(LABELS),
            "operating_points": {"chosen_by_model": predictions.operating_points_chosen,
                                 **{level: dict(zip(LABELS, values.round(6).tolist(), strict=True))
                                    for level, values in predictions.operating_thresholds.items()}},
            **({} if study_ood is None else {"ood_threshold": predictions.ood_threshold}),
            "slices": [{"image_id": image_id, "study_uid": study, "probabilities": p.round(6).tolist(),
                        **({} if alone is None else {"slice_only_probabilities": alone}),
                        "spread": s.round(6).tolist(), "flagged": _flagged_labels(flagged),
                        **dict(ood)}
                       for image_id, study, p, alone, s, flagged, ood in zip(
                           predictions.image_ids, predictions.study_uids, predictions.answer, slice_only,
                           predictions.spread, slice_flags, slice_ood, strict=True)],
            "studies": {study: {**(dict(zip(LABELS, p.round(6).tolist(), strict=True)) if heads is None else {
                                    **dict(zip(LABELS, heads[study].round(6).tolist(), strict=True)),
                                    "slice_max": dict(zip(LABELS, p.round(6).tolist(), strict=True))}),
                                "flagged": _flagged_labels(study_flags[study]),
                                **({} if study_ood is None else {study_score: round(study_ood[study][0], 6),
                                                                 OUT_OF_DISTRIBUTION: study_ood[study][1]})}
                        for study, p in studies.items()},
            "skipped": [vars(s) for s in predictions.skipped],
        }, indent=1) + "\n")
        return [out]
    with open(out, "w", newline="") as f:
        writer = csv.writer(f)
        if output_format == "rsna":  # Kaggle's submission format: six rows per image, in RSNA's label order
            writer.writerow(["ID", "Label"])
            for image_id, p in zip(predictions.image_ids, predictions.answer, strict=True):
                writer.writerows([f"{image_id}_{label}", f"{value:.6f}"]
                                 for label, value in zip(LABELS, p, strict=True))
        else:
            writer.writerow(["image_id", "study_uid", *LABELS,
                             *([] if predictions.refined is None else [f"{label}_slice_only" for label in LABELS]),
                             *(f"{label}_spread" for label in LABELS), *FLAGGED_COLUMNS,
                             *([] if study_ood is None else [OOD_SCORE, OUT_OF_DISTRIBUTION])])
            for image_id, study, p, alone, s, flagged, ood in zip(
                    predictions.image_ids, predictions.study_uids, predictions.answer, slice_only,
                    predictions.spread, slice_flags, slice_ood, strict=True):
                writer.writerow([image_id, study, *(f"{v:.6f}" for v in p),
                                 *([] if alone is None else (f"{v:.6f}" for v in alone)), *(f"{v:.6f}" for v in s),
                                 *map(_csv_value, map(bool, flagged)), *(_csv_value(value) for _, value in ood)])
    studies_out = output_paths(out, output_format)[1]
    with open(studies_out, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["study_uid", *([] if heads is None else LABELS), *(f"{label}_max" for label in LABELS),
                         *FLAGGED_COLUMNS, *([] if study_ood is None else [study_score, OUT_OF_DISTRIBUTION])])
        writer.writerows([study, *([] if heads is None else (f"{v:.6f}" for v in heads[study])),
                          *(f"{v:.6f}" for v in p), *map(_csv_value, map(bool, study_flags[study])),
                          *([] if study_ood is None else map(_csv_value, study_ood[study]))]
                         for study, p in studies.items())
    return [out, studies_out]


def _flagged_labels(flagged: np.ndarray) -> list[str]:
    return [label for label, flag in zip(LABELS, flagged, strict=True) if flag]


def _csv_value(value: float | bool) -> str:
    """A flag or an OOD score in a CSV cell: a flag as 0/1, a score with six decimals."""
    return str(int(value)) if isinstance(value, bool) else f"{value:.6f}"
