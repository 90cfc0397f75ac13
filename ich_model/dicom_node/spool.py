"""The spool of `ich serve`: every received instance on disk before its C-STORE is answered, grouped by study, with
the structured reports and the results log.

    <spool>/incoming/                        instances being written (fsynced, then renamed into their study)
    <spool>/studies/<study>/<instance>.dcm   one file per SOP Instance UID: a copy sent again is a duplicate
    <spool>/reports/<study>/v<N>.dcm         the structured report of the study's N-th scoring
    <spool>/results.jsonl                    one line per scoring, written last: a result exists when its line does
    <spool>/writer.lock                      one service per spool

Folder and file names are hashes of the UIDs, so that no identifier is in a path or in a log line that names one;
the files hold what the hospital sent, and results.jsonl the study's UID (a reader matches results to studies).
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from ich_model.json_lines import append_record, read_records, set_aside_torn

INCOMING, STUDIES, REPORTS, RESULTS = "incoming", "studies", "reports", "results.jsonl"


def study_key(study_uid: str) -> str:
    """The study's name in the spool and in log lines."""
    return hashlib.sha256(study_uid.encode()).hexdigest()[:16]


def _instance_file(sop_instance_uid: str) -> str:
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:24] + ".dcm"


def _is_result(record: dict) -> bool:
    return isinstance(record.get("study"), str) and isinstance(record.get("version"), int)


@dataclass(frozen=True)
class SpooledStudy:
    key: str
    instances: tuple[Path, ...]  # in name order
    newest_arrival: float  # the newest instance's modification time (seconds since the epoch)

    @property
    def digest(self) -> str:
        """Which instances the study holds: a result scored on the same ones is its result."""
        return hashlib.sha256("\n".join(path.name for path in self.instances).encode()).hexdigest()[:16]


class Spool:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        for folder in (INCOMING, STUDIES, REPORTS):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def clear_incoming(self) -> None:
        """Remove the writes that a crash stopped (never answered with success); only the spool's service calls
        this, before it listens."""
        for leftover in (self.root / INCOMING).iterdir():
            leftover.unlink()

    def store(self, encoded: bytes, study_uid: str, sop_instance_uid: str) -> bool:
        """Write one instance (a DICOM file's bytes) into its study, on disk when this returns; False when the study
        holds the instance already (sent again: the first copy is kept)."""
        folder = self.root / STUDIES / study_key(study_uid)
        target = folder / _instance_file(sop_instance_uid)
        if target.exists():
            return False
        folder.mkdir(exist_ok=True)
        temporary = self.root / INCOMING / f"{uuid.uuid4().hex}.part"
        with open(temporary, "wb") as f:
            f.write(encoded)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, target)  # fails if a concurrent copy of the same instance got there first
        except FileExistsError:
            return False
        finally:
            temporary.unlink()
        _fsync_folder(folder)
        return True

    def study(self, key: str) -> SpooledStudy:
        folder = self.root / STUDIES / key
        instances = tuple(sorted(folder.glob("*.dcm")))
        newest = max((path.stat().st_mtime for path in instances), default=0.0)
        return SpooledStudy(key, instances, newest)

    def studies(self) -> list[SpooledStudy]:
        return [self.study(folder.name) for folder in sorted((self.root / STUDIES).iterdir()) if folder.is_dir()]

    def report_path(self, key: str, version: int) -> Path:
        return self.root / REPORTS / key / f"v{version}.dcm"

    def write_report(self, key: str, version: int, dataset) -> Path:
        """Save a structured report atomically (a reader never sees a part of one)."""
        path = self.report_path(key, version)
        path.parent.mkdir(exist_ok=True)
        temporary = path.with_suffix(".part")
        dataset.save_as(temporary, enforce_file_format=True)
        os.replace(temporary, path)
        return path

    def results(self) -> list[dict]:
        return read_records(self.root / RESULTS, _is_result)[0]

    def latest_results(self) -> dict[str, dict]:
        """Each scored study's newest result, by study key."""
        return {record["study"]: record for record in self.results()}

    def unscored(self, latest: dict[str, dict]) -> list[SpooledStudy]:
        """The studies whose instances have no result in `latest` (never scored, or instances came after it)."""
        return [study for study in self.studies()
                if study.instances and latest.get(study.key, {}).get("instances_digest") != study.digest]

    def repair_results(self) -> list[str]:
        """Set aside the results log's torn lines (a crash while one was written): their studies are scored again."""
        return set_aside_torn(self.root / RESULTS, _is_result)

    def record_result(self, result: dict) -> None:
        append_record(self.root / RESULTS, result)


def _fsync_folder(folder: Path) -> None:
    """The rename itself on disk, not only the file's bytes."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
