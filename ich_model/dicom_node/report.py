"""The result of one scored study as DICOM: a Comprehensive 3D SR (highdicom) holding a TID 1500 measurement report.

One measurement group, found by the model (algorithm identification: the pushed version and the project's
release): the study-level probability of each subtype and of any hemorrhage, the qualitative finding "suspected
intracranial hemorrhage" yes or no (the `any` probability against the operating threshold), and as its source
images the key slices, those with the highest `any` probability. A comment says that it is not a diagnosis; the
document is UNVERIFIED and its evidence lists every instance of the study that was scored. A study scored again
(instances came after its result) gets a new version in the same series that names the earlier one as its
predecessor, so a PACS shows the newest.

Concepts without a standard code (the probabilities of each subtype, the triage finding) use the private coding
scheme 99ICH, as DICOM allows for local codes.
"""

from __future__ import annotations

from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from ich_model.constants import ABBREVIATIONS, ANY, LABELS
from ich_model.description import project_version

CODING_SCHEME = "99ICH"
CT_HEAD = hd.sr.CodedConcept("24725-4", "LN", "CT Head")
SUSPECTED = hd.sr.CodedConcept("ICH-SUSPECTED", CODING_SCHEME, "Suspected intracranial hemorrhage")
NOT_A_DIAGNOSIS = ("Produced by a machine-learning model for triage (worklist priority). It is not a diagnosis "
                   "and has not been reviewed: every study must be read by a radiologist.")
SERIES_NUMBER = 9100  # beyond a scanner's series numbers, so the report sorts after the images
SERIES_DESCRIPTION = "ICH triage (AI, not a diagnosis)"
KEY_SLICES = 3
# The patient and study attributes that the report copies from its evidence: a scanner writes them (type 2),
# possibly empty; a file without them (the synthetic set's) gets them empty, as type 2 allows.
_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
           "ReferringPhysicianName", "AccessionNumber", "StudyID")


def probability_concept(label: str) -> hd.sr.CodedConcept:
    meaning = "any intracranial hemorrhage" if label == ANY else f"{label} hemorrhage"
    # A code value has at most 16 characters: the subtype's abbreviation (EDH, IPH, IVH, SAH, SDH, ANY).
    return hd.sr.CodedConcept(f"ICH-P-{ABBREVIATIONS[label].upper()}", CODING_SCHEME, f"Probability of {meaning}")


@dataclass(frozen=True)
class StudyResult:
    """What one scoring of a study found: the study's probabilities [6] in label order, its slices' SOP Instance
    UIDs with their `any` probabilities, and the operating threshold on `any`."""

    probabilities: np.ndarray
    slice_uids: list[str]
    slice_any: np.ndarray
    threshold: float

    @property
    def suspected(self) -> bool:
        return bool(self.probabilities[LABELS.index(ANY)] >= self.threshold)

    def key_slices(self, count: int = KEY_SLICES) -> list[str]:
        order = np.argsort(-np.asarray(self.slice_any), kind="stable")[:count]
        return [self.slice_uids[index] for index in order]


def _evidence(headers: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The instances' headers, with the type 2 attributes a file lacks present and empty."""
    evidence = []
    for header in headers:
        copy = pydicom.Dataset(header)
        copy.file_meta = getattr(header, "file_meta", pydicom.dataset.FileMetaDataset())
        for keyword in _TYPE_2:
            if keyword not in copy:
                setattr(copy, keyword, "")
        evidence.append(copy)
    return evidence


def report_uids(study_uid: str, version: int, instances_digest: str) -> tuple[str, str]:
    """(series, SOP instance) UIDs of a study's report: the same study, version and instances give the same UIDs,
    so a scoring repeated after a crash writes the same document, not a second one."""
    return (generate_uid(entropy_srcs=["ich serve report series", study_uid]),
            generate_uid(entropy_srcs=["ich serve report", study_uid, str(version), instances_digest]))


def structured_report(headers: list[pydicom.Dataset], result: StudyResult, model_version: str, model_kind: str,
                      version: int, instances_digest: str,
                      previous: pydicom.Dataset | None = None) -> hd.sr.Comprehensive3DSR:
    """The study's report: `headers` are the scored instances (read without pixels), `model_version` the pushed
    version's folder name and `model_kind` its description's kind (ensemble or study model); `version` counts the
    study's scorings from 1 and `previous` is the report that this one supersedes."""
    evidence = _evidence(headers)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    algorithm = hd.sr.AlgorithmIdentification(
        name=f"ich-pipeline {model_kind}", version=model_version,
        parameters={"operating threshold (any)": f"{result.threshold:g}", "ich-pipeline release": project_version()})
    measurements = [hd.sr.Measurement(name=probability_concept(label), value=float(np.round(probability, 6)),
                                      unit=codes.UCUM.NoUnits, algorithm_id=algorithm)
                    for label, probability in zip(LABELS, result.probabilities, strict=True)]
    finding = hd.sr.QualitativeEvaluation(name=SUSPECTED, value=codes.SCT.Yes if result.suspected else codes.SCT.No)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(entropy_srcs=["ich serve finding", str(headers[0].StudyInstanceUID)]),
            identifier="ICH triage"),
        finding_type=codes.SCT.IntracranialHemorrhage, algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=[finding],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(by_uid[uid])
                       for uid in result.key_slices()])
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=generate_uid(entropy_srcs=["ich serve device", model_version]), name="ich serve",
            manufacturer_name="ich-pipeline", model_name=f"{model_kind} {model_version}"))
    content = hd.sr.MeasurementReport(observation_context=hd.sr.ObservationContext(observer_device_context=device),
                                      procedure_reported=CT_HEAD, imaging_measurements=[group])
    root = content[0]
    root.ContentSequence.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=NOT_A_DIAGNOSIS,
                                                      relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    series_uid, sop_uid = report_uids(str(headers[0].StudyInstanceUID), version, instances_digest)
    return hd.sr.Comprehensive3DSR(
        evidence=evidence, content=root, series_instance_uid=series_uid, series_number=SERIES_NUMBER,
        sop_instance_uid=sop_uid, instance_number=version, manufacturer="ich-pipeline", is_complete=True,
        is_final=False, is_verified=False, series_description=SERIES_DESCRIPTION,
        previous_versions=None if previous is None else [previous])
