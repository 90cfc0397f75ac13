"""`ich serve`: a DICOM node that triages each head CT study it receives with the newest published model.

A Storage SCP (pynetdicom) for CT Image Storage, in every transfer syntax that `ich predict` decodes, and
Verification (C-ECHO). Only calling AE titles and hosts on the allow list may associate. Each instance is checked
by the reader that `ich predict` and the ExampleGen use (ich_model.dicom) and written to the spool (fsynced)
before its C-STORE is answered with success; a file that is not a usable CT slice is answered with a failure
status (0xA900 for a data set that is not a CT slice, 0xC000 for one that cannot be read) and not kept.

A study is complete when no association that sent it is open and no instance of it arrived for `study_timeout`
seconds. It is then scored, one study at a time, with the newest complete version in the serving folder (looked
up before each study: a push is picked up between studies), and its result is written: a structured report
(ich_model.dicom_node.report) in the spool and, with a destination, sent there by C-STORE; then its line in
results.jsonl, which is what makes it done. Instances that arrive after a study was scored make it score again:
a new version of the report that supersedes the earlier one. On start the service scores every spooled study
whose instances have no result (a kill -9 loses nothing that a sender was told is stored; a scoring that a crash
stopped is done again, its report the same document by its UIDs).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pydicom
from pydicom.pixels import get_decoder
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, CTImageStorage, Verification

from ich_model.constants import ANY, LABELS
from ich_model.dicom import DicomRejected, read_slice
from ich_model.dicom_node.report import StudyResult, structured_report
from ich_model.dicom_node.spool import STUDIES, Spool, SpooledStudy, study_key
from ich_model.json_lines import write_atomically
from ich_model.operating_points import STUDY_LEVEL

STATUS_FILE = "status.json"
SUCCESS, NOT_A_CT_SLICE, CANNOT_UNDERSTAND = 0x0000, 0xA900, 0xC000
# DicomRejected reasons of a data set that is readable but not one grayscale CT slice (another modality, colour,
# several frames). The rest cannot be read: cut short, corrupt (a CT image without pixel data among them), or
# pixels that do not decode.
NOT_CT_REASONS = frozenset({"not_ct", "not_grayscale", "multi_frame"})
REJECT_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


def readable_transfer_syntaxes() -> list[str]:
    """Every transfer syntax whose pixel data pydicom decodes here (native ones and the compressed ones with a
    decoder installed): what `ich predict` reads."""
    readable = []
    for syntax in AllTransferSyntaxes:
        if not syntax.is_encapsulated:
            readable.append(syntax)
            continue
        try:
            if get_decoder(syntax).is_available:
                readable.append(syntax)
        except NotImplementedError:
            pass
    return readable


@dataclass(frozen=True)
class Peer:
    """An entry of the allow list, `AE@HOST` (either may be `*`), or a destination `AE@HOST:PORT`."""

    ae_title: str
    host: str
    port: int | None = None

    @classmethod
    def parse(cls, text: str, with_port: bool = False) -> Peer:
        ae_title, at, address = text.partition("@")
        host, colon, port = address.rpartition(":") if with_port else (address, "", "")
        if not at or not ae_title or not (host if with_port else address) or (with_port and not port.isdigit()):
            form = "AE@HOST:PORT" if with_port else "AE@HOST (either may be *)"
            raise ValueError(f"{text!r} is not {form}")
        if len(ae_title) > 16:
            raise ValueError(f"{text!r}: an AE title has at most 16 characters")
        return cls(ae_title, host if with_port else address, int(port) if with_port else None)

    def allows(self, ae_title: str, host: str) -> bool:
        return self.ae_title in ("*", ae_title) and self.host in ("*", host)


@dataclass
class _Association:
    label: str  # AE@HOST, for the log
    studies: set[str] = field(default_factory=set)
    counts: Counter = field(default_factory=Counter)  # stored, duplicate, refused


class Service:
    def __init__(self, serving_dir: str | os.PathLike, spool: str | os.PathLike, allow: list[Peer], *,
                 ae_title: str = "ICH", port: int = 11112, bind: str = "0.0.0.0", study_timeout: float = 30.0,
                 threshold: float | None = None, forward: Peer | None = None, tls: tuple[str, str] | None = None,
                 echo=print):
        if not allow:
            raise ValueError("no --allow entry: name the senders (AE@HOST) that may store studies here")
        self.serving_dir, self.spool = str(serving_dir), Spool(spool)
        self.allow, self.ae_title, self.port, self.bind = allow, ae_title, port, bind
        self.study_timeout, self.threshold, self.forward, self.tls = study_timeout, threshold, forward, tls
        self.echo = echo
        self._lock = threading.Lock()
        self._associations: dict[int, _Association] = {}
        self._arrivals: dict[str, float] = {}  # study key -> wall-clock time of its newest instance
        self._latest: dict[str, dict] = {}  # study key -> its newest result, read from the log once at start
        self._scoring: str | None = None
        self._model_dir: str | None = None
        self._model = None
        self._model_kind = "unknown"
        self._server = None
        self._stop = threading.Event()
        self._scorer: threading.Thread | None = None

    # --- the network side (pynetdicom's threads, one per association) ---

    def start(self) -> None:
        self.spool.clear_incoming()
        torn = self.spool.repair_results()
        if torn:
            self.echo(f"warning: {len(torn)} line(s) of the results log were not whole results (a crash while one "
                      "was written); set aside, their studies are scored again", flush=True)
        self._latest = self.spool.latest_results()
        for study in self.spool.unscored(self._latest):
            self._arrivals[study.key] = study.newest_arrival  # spooled before a stop, never scored
        if self._arrivals:
            self.echo(f"{len(self._arrivals)} spooled studies have no result yet: they are scored when their "
                      f"timeout has passed", flush=True)
        try:
            self._load_newest_model()  # now, not when the first study is waiting for it
        except (ValueError, OSError) as error:
            self.echo(f"warning: no model yet ({error}); studies are received and wait for one", flush=True)
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.add_supported_context(CTImageStorage, readable_transfer_syntaxes())
        ae.add_supported_context(Verification)
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*self.tls)
        self._server = ae.start_server((self.bind, self.port), block=False, ssl_context=context, evt_handlers=[
            (evt.EVT_REQUESTED, self._on_requested), (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_closed), (evt.EVT_ABORTED, self._on_closed)])
        self.port = self._server.server_address[1]
        self._scorer = threading.Thread(target=self._score_loop, name="ich-serve-scorer", daemon=True)
        self._scorer.start()
        self.echo(f"ich serve: {self.ae_title} listening on {self.bind}:{self.port}{' (TLS)' if context else ''}; "
                  f"spool {self.spool.root}; models from {self.serving_dir}; a study is complete "
                  f"{self.study_timeout:g} s after its last instance", flush=True)
        self._write_status()

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._scorer is not None:
            self._scorer.join()

    def _on_requested(self, event) -> None:
        requestor = event.assoc.requestor
        ae_title, host = str(requestor.primitive.calling_ae_title).strip(), requestor.address
        if not any(peer.allows(ae_title, host) for peer in self.allow):
            self.echo(f"refused association from {ae_title}@{host}: not on the allow list", flush=True)
            event.assoc.acse.send_reject(REJECT_PERMANENT, SOURCE_SERVICE_USER, CALLING_AE_NOT_RECOGNISED)

    def _on_accepted(self, event) -> None:
        requestor = event.assoc.requestor
        with self._lock:
            self._associations[id(event.assoc)] = _Association(f"{str(requestor.ae_title).strip()}@"
                                                               f"{requestor.address}")

    def _on_store(self, event) -> int:
        encoded = event.encoded_dataset()
        with self._lock:
            association = self._associations[id(event.assoc)]
        try:
            ct = read_slice(encoded)
        except DicomRejected as rejected:
            association.counts["refused"] += 1
            self.echo(f"refused an instance from {association.label}: {rejected.reason} ({rejected.message})",
                      flush=True)
            return NOT_A_CT_SLICE if rejected.reason in NOT_CT_REASONS else CANNOT_UNDERSTAND
        except Exception as error:  # noqa: BLE001 - whatever a broken data set makes a decoder raise
            association.counts["refused"] += 1
            self.echo(f"refused an instance from {association.label}: unreadable ({type(error).__name__})",
                      flush=True)
            return CANNOT_UNDERSTAND
        if not ct.study_uid or not ct.image_id:
            association.counts["refused"] += 1
            self.echo(f"refused an instance from {association.label}: no Study or SOP Instance UID", flush=True)
            return CANNOT_UNDERSTAND
        try:
            stored = self.spool.store(encoded, ct.study_uid, ct.image_id)
        except OSError as error:  # a full disk: the sender keeps the instance and may send it again
            association.counts["refused"] += 1
            self.echo(f"error: could not spool an instance: {error}", flush=True)
            return 0xA700  # out of resources
        key = study_key(ct.study_uid)
        with self._lock:
            association.studies.add(key)
            association.counts["stored" if stored else "duplicate"] += 1
            if stored:
                self._arrivals[key] = time.time()
        return SUCCESS

    def _on_closed(self, event) -> None:
        with self._lock:
            association = self._associations.pop(id(event.assoc), None)
        if association is not None:
            counts = association.counts
            how = "released" if event.event is evt.EVT_RELEASED else "aborted"
            self.echo(f"association from {association.label} {how}: {counts['stored']} instances stored, "
                      f"{counts['duplicate']} duplicates, {counts['refused']} refused, "
                      f"{len(association.studies)} studies", flush=True)

    # --- the scoring side (one thread) ---

    def _score_loop(self) -> None:
        while not self._stop.wait(0.2):
            key = self._next_complete()
            if key is not None:
                self._score(key)

    def _next_complete(self) -> str | None:
        """The study that has waited longest among those that are complete."""
        now = time.time()
        with self._lock:
            open_studies = set().union(*(a.studies for a in self._associations.values()))
            complete = [(arrival, key) for key, arrival in self._arrivals.items()
                        if key not in open_studies and now - arrival >= self.study_timeout]
            if not complete:
                return None
            _, key = min(complete)
            self._scoring = key
            del self._arrivals[key]
        self._write_status()
        return key

    def _load_newest_model(self) -> None:
        from ich_model.serving_folder import newest_model_dir

        model_dir = newest_model_dir(self.serving_dir, warn=lambda message: self.echo(message, flush=True))
        if model_dir != self._model_dir:
            import tensorflow as tf

            from ich_model.description import read_description

            self._model, self._model_dir = tf.saved_model.load(model_dir), model_dir
            self._model_kind = read_description(model_dir)["kind"]
            self.echo(f"model {os.path.basename(model_dir)} loaded from {self.serving_dir}", flush=True)

    def _score(self, key: str) -> None:
        try:
            self._load_newest_model()
        except (ValueError, OSError) as error:
            self.echo(f"warning: study {key} waits: no model to score it with ({error})", flush=True)
            with self._lock:
                self._arrivals.setdefault(key, time.time())
                self._scoring = None
            return
        study = self.spool.study(key)
        # Passed over when its newest result holds these very instances (they came while it was being scored).
        if self._latest.get(key, {}).get("instances_digest") != study.digest:
            try:
                self._score_study(study)
            except Exception as error:  # noqa: BLE001 - one study's failure never stops the service
                self.echo(f"error: study {key} could not be scored: {type(error).__name__}: {error}", flush=True)
        with self._lock:
            self._scoring = None
        self._write_status()

    def _score_study(self, study: SpooledStudy) -> None:
        from ich_model.predict import predict

        started = time.time()
        predictions = predict(study.instances, self._model_dir, progress=False, loaded=self._model)
        if not predictions.image_ids:
            self.echo(f"error: study {study.key}: none of its {len(study.instances)} instances could be scored",
                      flush=True)
            return
        study_uid = predictions.study_uids[0]
        heads = predictions.study_heads
        probabilities = heads[study_uid] if heads is not None else predictions.studies()[study_uid]
        # Unless told otherwise, the model's own study operating point for `any` (chosen on its eval split).
        threshold = (float(predictions.operating_thresholds[STUDY_LEVEL][LABELS.index(ANY)])
                     if self.threshold is None else self.threshold)
        result = StudyResult(probabilities, predictions.image_ids, predictions.answer[:, LABELS.index(ANY)],
                             threshold)
        previous = self._latest.get(study.key)
        version = 1 if previous is None else previous["version"] + 1
        with pydicom.config.disable_value_validation():  # RSNA-style IDs in UID tags, as the reader allows
            headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in study.instances]
            earlier = pydicom.dcmread(self.spool.report_path(study.key, version - 1)) if previous else None
            kind = self._model_kind
            model_version = os.path.basename(self._model_dir)
            report = structured_report(headers, result, model_version, kind, version, study.digest, earlier)
            path = self.spool.write_report(study.key, version, report)
        forwarded = self._send(report) if self.forward is not None else None
        finished = time.time()
        record = {
            "study": study.key, "study_uid": study_uid, "version": version, "instances": len(study.instances),
            "instances_digest": study.digest, "scored_slices": len(predictions.image_ids),
            "skipped": [vars(s) for s in predictions.skipped], "model": model_version, "model_kind": kind,
            "probabilities": {label: round(float(p), 6) for label, p in zip(LABELS, probabilities, strict=True)},
            "threshold": threshold, "suspected": result.suspected, "key_slices": result.key_slices(),
            "report": str(path.relative_to(self.spool.root)), "report_sop_instance_uid": str(report.SOPInstanceUID),
            "forwarded": forwarded, "scoring_seconds": round(finished - started, 3),
            "seconds_after_last_instance": round(finished - study.newest_arrival, 3),
            "scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.spool.record_result(record)
        with self._lock:
            self._latest[study.key] = record
        finding = "suspected hemorrhage" if result.suspected else "no hemorrhage suspected"
        self.echo(f"study {study.key}: {len(study.instances)} instances scored in {finished - started:.1f} s, "
                  f"{record['seconds_after_last_instance']:.1f} s after its last instance: {finding} (any "
                  f"{record['probabilities'][ANY]:.3f}, threshold {threshold:.4g}); report v{version}"
                  + ("" if forwarded is None else f", forwarded: {forwarded}"), flush=True)

    def _send(self, report) -> str:
        """C-STORE the report to the destination; 'ok' or what went wrong (the result is kept either way)."""
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(Comprehensive3DSRStorage, ExplicitVRLittleEndian)
        association = ae.associate(self.forward.host, self.forward.port, ae_title=self.forward.ae_title)
        if not association.is_established:
            return f"failed: no association with {self.forward.ae_title}@{self.forward.host}:{self.forward.port}"
        try:
            status = association.send_c_store(report)
        finally:
            association.release()
        code = int(getattr(status, "Status", -1)) if status else -1
        return "ok" if code == SUCCESS else f"failed: status 0x{code & 0xFFFF:04X}"

    # --- status ---

    def status(self) -> dict:
        with self._lock:
            return {"pid": os.getpid(), "ae_title": self.ae_title, "port": self.port,
                    "waiting": len(self._arrivals), "scoring": int(self._scoring is not None),
                    "done": len(self._latest),
                    "open_associations": len(self._associations),
                    "model": None if self._model_dir is None else os.path.basename(self._model_dir),
                    "updated_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def _write_status(self) -> None:
        write_atomically(self.spool.root / STATUS_FILE, json.dumps(self.status(), indent=1) + "\n")

    def serve_forever(self) -> None:
        for library in ("pynetdicom", "highdicom"):
            logging.getLogger(library).setLevel(logging.WARNING)
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            self.echo("ich serve: stopping", flush=True)
        finally:
            self.stop()


def read_status(spool: str | os.PathLike, running: bool) -> dict:
    """What `ich serve --status` prints: the running service's own counts (`running`: a service holds the spool's
    lock), or else the spool's: studies with instances and no result on them, and studies with a result."""
    root = Path(spool)
    if not (root / STUDIES).is_dir():
        raise FileNotFoundError(f"{root} is not the spool of an ich serve (no {STUDIES}/ folder)")
    path = root / STATUS_FILE
    if running and path.exists():
        return {"running": True, **json.loads(path.read_text())}
    spooled = Spool(root)
    latest = spooled.latest_results()
    return {"running": running, "waiting": len(spooled.unscored(latest)), "scoring": 0, "done": len(latest)}
