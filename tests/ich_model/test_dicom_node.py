"""`ich serve` on a real DICOM network on loopback: pynetdicom's client sends synthetic studies as a scanner writes
them (numeric UIDs, patient tags), the service answers each C-STORE, scores each complete study with the newest
pushed model and writes a structured report that highdicom parses, whose evidence is exactly the sent instances
and whose probabilities are `ich predict`'s on the same files; the report reaches a destination SCP by C-STORE.
Bad instances get their DIMSE failure status and unknown callers an association rejection while the service goes
on serving; a kill -9 of `ich serve` loses nothing that a sender was told is stored."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, CTImageStorage, MRImageStorage, Verification

from components.dicom_example_gen import DicomExampleGen
from ich_model.constants import ANY, LABELS
from ich_model.dicom_node.report import NOT_A_DIAGNOSIS, SUSPECTED, probability_concept
from ich_model.dicom_node.service import CANNOT_UNDERSTAND, NOT_A_CT_SLICE, SUCCESS, Peer, Service
from ich_model.dicom_node.spool import RESULTS, STUDIES
from ich_model.predict import predict
from ich_model.synth import IMAGES_DIR, generate_dataset
from ich_model.synth.scanner import as_scanner_writes
from tests.pipeline_helpers import (
    export_ensemble,
    export_study_model,
    operating_points_at,
    run_example_gen,
    run_transform,
)

SCANNER, NODE = "SCANNER", "ICH"
TIMEOUT = 1.0  # --study-timeout of the tests' service
ANY_THRESHOLD = 0.37  # the study operating point for `any` in the served model's description
PATIENT_TAGS = {"PatientName": "TESTPATIENT^NODE", "PatientID": "MRN-00012345", "AccessionNumber": "ACC0042"}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """A serving folder whose newest version is a study model (a tiny ensemble and an untrained context model),
    and studies written as a scanner writes them: numeric UIDs, patient name, ID and accession number."""
    root = tmp_path_factory.mktemp("node")
    generate_dataset(root / "rsna", patients=6, slices_per_study=(4, 8), seed=29, size=64, positive_fraction=0.5,
                     progress=False)
    run_example_gen(DicomExampleGen(str(root / "rsna"), train_share=0.5), root / "examples")
    run_transform(root / "examples", root / "transform", root / "tft-tmp")
    ensemble_dir = export_ensemble(root / "transform", [_tiny(seed) for seed in (1, 2, 3)], root)
    serving = root / "serving"
    export_study_model(ensemble_dir, serving / "1700000000", operating_points=operating_points_at(
        [0.5] * len(LABELS), [0.5] * (len(LABELS) - 1) + [ANY_THRESHOLD]))
    studies = as_scanner_writes(root / "rsna" / IMAGES_DIR, root / "studies", PATIENT_TAGS)
    return serving, studies


def _tiny(seed: int):
    from ich_model.model.presets import build_cascade

    return build_cascade("tiny", seed=seed)


class Destination:
    """A Storage SCP for the forwarded reports (pynetdicom's server, as a PACS receives them)."""

    def __init__(self):
        self.received: list[pydicom.Dataset] = []
        ae = AE(ae_title="PACS")
        ae.add_supported_context(Comprehensive3DSRStorage, ExplicitVRLittleEndian)
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = self.server.server_address[1]

    def _on_store(self, event) -> int:
        self.received.append(event.dataset)
        return 0x0000

    def close(self):
        self.server.shutdown()


def send(files, port: int, calling: str = SCANNER, called: str = NODE, syntax=ExplicitVRLittleEndian) -> list:
    """C-STORE each file in one association; the statuses the node answered (None: the association failed)."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, [syntax])
    association = ae.associate("127.0.0.1", port, ae_title=called)
    if not association.is_established:
        return [None] * len(files)
    try:
        return [int(association.send_c_store(path).Status) for path in files]
    finally:
        association.release()


def wait_for_results(spool: Path, count: int, deadline: float = 120.0) -> list[dict]:
    stop = time.monotonic() + deadline
    while time.monotonic() < stop:
        if (spool / RESULTS).exists():
            lines = [json.loads(line) for line in (spool / RESULTS).read_text().splitlines() if line]
            if len(lines) >= count:
                return lines
        time.sleep(0.1)
    raise AssertionError(f"{count} results expected in {spool / RESULTS} within {deadline:g} s")


@pytest.fixture
def service(node, tmp_path):
    serving, _ = node
    destination = Destination()
    log: list[str] = []
    running = Service(serving, tmp_path / "spool", [Peer.parse(f"{SCANNER}@127.0.0.1")], port=0, bind="127.0.0.1",
                      study_timeout=TIMEOUT, forward=Peer("PACS", "127.0.0.1", destination.port),
                      echo=lambda message, **_: log.append(message))
    running.start()
    yield running, destination, log
    running.stop()
    destination.close()


def test_a_sent_study_comes_back_as_a_report_of_exactly_its_instances_with_ich_predict_s_probabilities(
        node, service, tmp_path):
    serving, studies = node
    running, destination, log = service
    sent = list(studies.items())[:2]
    for _, files in sent:
        assert send(files, running.port) == [SUCCESS] * len(files)
    results = wait_for_results(running.spool.root, len(sent))
    assert len(results) == len(sent)
    for study_uid, files in sent:
        [result] = [r for r in results if r["study_uid"] == study_uid]
        assert isinstance(hd.sr.srread(running.spool.root / result["report"]), hd.sr.Comprehensive3DSR)
        report = pydicom.dcmread(running.spool.root / result["report"])
        evidence = {item.ReferencedSOPInstanceUID for series in report.CurrentRequestedProcedureEvidenceSequence
                    for s in series.ReferencedSeriesSequence for item in s.ReferencedSOPSequence}
        assert evidence == {pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in files}
        assert report.PatientID == PATIENT_TAGS["PatientID"] and report.StudyInstanceUID == study_uid
        assert report.VerificationFlag == "UNVERIFIED"

        expected = predict(files, serving / "1700000000", progress=False)
        head = expected.study_heads[study_uid]
        measured = {item.ConceptNameCodeSequence[0].CodeValue: float(item.MeasuredValueSequence[0].NumericValue)
                    for item in _content(report) if item.ValueType == "NUM"}
        for label, probability in zip(LABELS, head, strict=True):
            assert measured[probability_concept(label).value] == pytest.approx(float(probability), abs=2e-6)
            assert result["probabilities"][label] == pytest.approx(float(probability), abs=2e-6)
        suspected = [item for item in _content(report) if item.ValueType == "CODE"
                     and item.ConceptNameCodeSequence[0].CodeValue == SUSPECTED.value]
        # Without --threshold, the finding is at the model's study operating point for `any`.
        assert result["threshold"] == pytest.approx(ANY_THRESHOLD)
        assert suspected[0].ConceptCodeSequence[0].CodeMeaning == ("Yes" if head[LABELS.index(ANY)] >= ANY_THRESHOLD
                                                                   else "No")
        any_by_slice = dict(zip(expected.image_ids, expected.answer[:, LABELS.index(ANY)], strict=True))
        top = sorted(any_by_slice, key=lambda uid: -any_by_slice[uid])[:3]
        assert result["key_slices"] == top
        assert any(item.ValueType == "TEXT" and item.TextValue == NOT_A_DIAGNOSIS for item in _content(report))

    forwarded = {str(ds.SOPInstanceUID) for ds in destination.received}
    assert forwarded == {r["report_sop_instance_uid"] for r in results} and all(r["forwarded"] == "ok"
                                                                               for r in results)
    # No patient identifier or UID in the operator's log: studies are named by their spool key.
    text = "\n".join(log)
    assert "association from SCANNER@127.0.0.1 released" in text and "instances scored" in text
    assert not any(value in text for value in [*PATIENT_TAGS.values(), *(uid for uid, _ in sent)])


def _content(report) -> list:
    """Every content item of a report, depth first."""
    items, stack = [], list(report.ContentSequence)
    while stack:
        item = stack.pop()
        items.append(item)
        stack.extend(getattr(item, "ContentSequence", []))
    return items


def test_compressed_instances_are_scored_as_ich_predict_scores_the_same_files(node, service, tmp_path):
    serving, studies = node
    running, _, _ = service
    study_uid, files = list(studies.items())[2]
    compressed = []
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        syntax = (RLELossless, JPEG2000Lossless)[index % 2]
        ds.compress(syntax)
        compressed.append((tmp_path / f"{index}.dcm", syntax))
        ds.save_as(compressed[-1][0], enforce_file_format=True)
    for path, syntax in compressed:
        assert send([path], running.port, syntax=syntax) == [SUCCESS]
    [result] = wait_for_results(running.spool.root, 1)
    expected = predict([path for path, _ in compressed], serving / "1700000000", progress=False)
    np.testing.assert_allclose([result["probabilities"][label] for label in LABELS],
                               expected.study_heads[study_uid], atol=2e-6)


def test_bad_instances_and_callers_are_refused_and_the_service_goes_on(node, service, tmp_path):
    _, studies = node
    running, _, log = service
    study_uid, files = list(studies.items())[3]
    good = pydicom.dcmread(files[0])
    mr = copy.deepcopy(good)
    mr.Modality, mr.SOPClassUID = "MR", MRImageStorage
    mr.file_meta.MediaStorageSOPClassUID = MRImageStorage
    rgb = copy.deepcopy(good)
    rgb.SamplesPerPixel, rgb.PhotometricInterpretation, rgb.PlanarConfiguration = 3, "RGB", 0
    rgb.PixelData = np.zeros((good.Rows, good.Columns, 3), np.uint8).tobytes()
    rgb.BitsAllocated, rgb.BitsStored, rgb.HighBit, rgb.PixelRepresentation = 8, 8, 7, 0
    truncated = copy.deepcopy(good)
    truncated.PixelData = good.PixelData[: len(good.PixelData) // 3]
    for name, ds in (("mr", mr), ("rgb", rgb), ("truncated", truncated)):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
    corrupt = tmp_path / "corrupt.dcm"
    corrupt.write_bytes(files[0].read_bytes()[:600] + b"\xff" * 64)

    assert _offered_mr(running.port) == "rejected"  # no MR Image Storage here: refused at association
    mr.SOPClassUID = mr.file_meta.MediaStorageSOPClassUID = CTImageStorage  # an MR image sent as CT
    mr.save_as(tmp_path / "mr.dcm", enforce_file_format=True)
    assert send([tmp_path / "mr.dcm", tmp_path / "rgb.dcm"], running.port) == [NOT_A_CT_SLICE, NOT_A_CT_SLICE]
    assert send([tmp_path / "truncated.dcm"], running.port) == [CANNOT_UNDERSTAND]
    assert _send_raw(corrupt, running.port) == CANNOT_UNDERSTAND
    assert send(files[:1], running.port, calling="INTRUDER") == [None]
    assert send(files[:1], running.port, called="NOT-ICH") == [None]
    text = "\n".join(log)
    assert "refused association from INTRUDER@127.0.0.1: not on the allow list" in text
    assert "not_ct" in text and "not_grayscale" in text and "truncated" in text
    assert not list((running.spool.root / STUDIES).rglob("*.dcm"))  # nothing refused was kept
    assert _echo(running.port) == SUCCESS

    assert send(files, running.port) == [SUCCESS] * len(files)  # and it goes on serving
    assert send(files[:2], running.port) == [SUCCESS, SUCCESS]  # sent again: duplicates, kept once
    [result] = wait_for_results(running.spool.root, 1)
    assert result["instances"] == len(files) and result["study_uid"] == study_uid
    assert "2 duplicates" in "\n".join(log)


def test_a_host_not_on_the_allow_list_is_rejected(node, tmp_path):
    serving, studies = node
    log: list[str] = []
    running = Service(serving, tmp_path / "spool", [Peer.parse(f"{SCANNER}@10.9.8.7")], port=0, bind="127.0.0.1",
                      study_timeout=TIMEOUT, echo=lambda message, **_: log.append(message))
    running.start()
    try:
        assert send(next(iter(studies.values()))[:1], running.port) == [None]
    finally:
        running.stop()
    assert "refused association from SCANNER@127.0.0.1: not on the allow list" in "\n".join(log)


def _offered_mr(port: int) -> str:
    """How the node answers a presentation context for MR Image Storage."""
    ae = AE(ae_title=SCANNER)
    ae.add_requested_context(MRImageStorage, [ExplicitVRLittleEndian])
    ae.add_requested_context(Verification)
    association = ae.associate("127.0.0.1", port, ae_title=NODE)
    try:
        return "accepted" if any(cx.abstract_syntax == MRImageStorage for cx in association.accepted_contexts) \
            else "rejected"
    finally:
        association.release()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1 (the cryptography package, which the lock holds for Google's clients)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ich serve test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .sign(key, hashes.SHA256()))
    cert, key_file = folder / "node.pem", folder / "node.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key_file


def test_with_tls_a_study_is_stored_over_tls_and_a_plain_association_is_not_served(node, tmp_path):
    import ssl

    serving, studies = node
    cert, key = _self_signed(tmp_path)
    running = Service(serving, tmp_path / "spool", [Peer.parse(f"{SCANNER}@127.0.0.1")], port=0, bind="127.0.0.1",
                      study_timeout=TIMEOUT, tls=(str(cert), str(key)), echo=lambda message, **_: None)
    running.start()
    try:
        study_uid, files = list(studies.items())[-1]
        assert send(files[:1], running.port) == [None]  # no TLS: no association
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        ae = AE(ae_title=SCANNER)
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
        association = ae.associate("127.0.0.1", running.port, ae_title=NODE, tls_args=(client, "127.0.0.1"))
        assert association.is_established
        try:
            assert [int(association.send_c_store(path).Status) for path in files] == [SUCCESS] * len(files)
        finally:
            association.release()
        [result] = wait_for_results(running.spool.root, 1)
        assert result["study_uid"] == study_uid and result["instances"] == len(files)
    finally:
        running.stop()


def _send_raw(path: Path, port: int) -> int:
    """C-STORE a file's bytes as they are, without pynetdicom decoding them first (a corrupt data set): only its
    file meta is read, the data set is streamed from the file."""
    from pynetdicom import _config

    ae = AE(ae_title=SCANNER)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    association = ae.associate("127.0.0.1", port, ae_title=NODE)
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        return int(association.send_c_store(path).Status)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        association.release()


def _echo(port: int) -> int:
    ae = AE(ae_title=SCANNER)
    ae.add_requested_context(Verification)
    association = ae.associate("127.0.0.1", port, ae_title=NODE)
    try:
        return int(association.send_c_echo().Status)
    finally:
        association.release()


def test_instances_after_a_result_make_a_new_version_that_supersedes_it_with_the_newest_model(node, service):
    serving, studies = node
    running, destination, log = service
    study_uid, files = list(studies.items())[4]
    assert send(files[:-2], running.port) == [SUCCESS] * (len(files) - 2)
    [first] = wait_for_results(running.spool.root, 1)
    shutil.copytree(serving / "1700000000", serving / "1700000999")  # a push while the service runs
    try:
        assert send(files[-2:], running.port) == [SUCCESS, SUCCESS]
        first, second = wait_for_results(running.spool.root, 2)
    finally:
        shutil.rmtree(serving / "1700000999")
    assert (first["version"], second["version"]) == (1, 2) and second["instances"] == len(files)
    assert (first["model"], second["model"]) == ("1700000000", "1700000999")
    report = pydicom.dcmread(running.spool.root / second["report"])
    [predecessor] = report.PredecessorDocumentsSequence
    assert predecessor.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first[
        "report_sop_instance_uid"]
    assert report.SeriesInstanceUID == pydicom.dcmread(running.spool.root / first["report"]).SeriesInstanceUID
    assert len(destination.received) == 2


def test_a_killed_service_loses_no_stored_instance_and_scores_each_study_once_on_restart(node, tmp_path):
    """`ich serve` in its own process, killed (-9) with two studies stored and not yet scored (a long timeout),
    then started again with a short one: both are scored, once each, from the spool."""
    serving, studies = node
    spool = tmp_path / "spool"
    sent = list(studies.items())[:2]

    def start(timeout: float) -> tuple[subprocess.Popen, int, list[str]]:
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "serve", "--model", str(serving), "--spool", str(spool),
             "--port", "0", "--bind", "127.0.0.1", "--allow", f"{SCANNER}@*", "--study-timeout", str(timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
        lines = []
        for line in process.stdout:
            lines.append(line)
            if "listening on" in line:
                return process, int(line.split("listening on 127.0.0.1:")[1].split(";")[0]), lines
        raise AssertionError("ich serve did not start: " + "".join(lines))

    process, port, _ = start(timeout=600)
    try:
        for _, files in sent:
            assert send(files, port) == [SUCCESS] * len(files)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        stored = sorted(p.name for p in (spool / STUDIES).rglob("*.dcm"))
        assert len(stored) == sum(len(files) for _, files in sent)
        assert not (spool / RESULTS).exists()

        process, port, lines = start(timeout=TIMEOUT)
        assert any(f"{len(sent)} spooled studies have no result yet" in line for line in lines)
        threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
        results = wait_for_results(spool, len(sent))
        time.sleep(2 * TIMEOUT + 1)  # and no second scoring of either
        assert len(wait_for_results(spool, len(sent))) == len(sent)
        assert sorted(r["study_uid"] for r in results) == sorted(uid for uid, _ in sent)
        status = subprocess.run([sys.executable, "-m", "pipeline.cli", "serve", "--spool", str(spool), "--status"],
                                capture_output=True, text=True, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"},
                                check=True)
        assert json.loads(status.stdout) | {"updated_at": None} == {
            "running": True, "pid": process.pid, "ae_title": NODE, "port": port, "waiting": 0, "scoring": 0,
            "done": len(sent), "open_associations": 0, "model": "1700000000", "updated_at": None}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    assert sum("instances scored" in line for line in lines) == len(sent)


def test_eight_senders_at_once_lose_no_instance_and_every_study_is_scored_once(node, tmp_path):
    """8 senders at the same time, each with 5 studies of 32 slices (one association per study)."""
    serving, _ = node
    generate_dataset(tmp_path / "rsna", patients=40, slices_per_study=32, seed=31, size=64, positive_fraction=0.5,
                     progress=False)
    studies = list(as_scanner_writes(tmp_path / "rsna" / IMAGES_DIR, tmp_path / "studies").items())[:40]
    assert len(studies) == 40 and {len(files) for _, files in studies} == {32}  # a patient may have two studies
    running = Service(serving, tmp_path / "spool", [Peer.parse(f"{SCANNER}@127.0.0.1")], port=0, bind="127.0.0.1",
                      study_timeout=TIMEOUT, echo=lambda message, **_: None)
    running.start()
    statuses: list[int | None] = []
    try:
        senders = [threading.Thread(target=lambda mine: [statuses.extend(send(files, running.port))
                                                         for _, files in mine], args=(studies[i::8],))
                   for i in range(8)]
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
        results = wait_for_results(running.spool.root, len(studies), deadline=300)
        time.sleep(2 * TIMEOUT + 0.5)
        results = wait_for_results(running.spool.root, len(studies))
    finally:
        running.stop()
    assert statuses == [SUCCESS] * 40 * 32
    assert len(list((running.spool.root / STUDIES).rglob("*.dcm"))) == 40 * 32
    assert len(results) == 40 and sorted(r["study_uid"] for r in results) == sorted(uid for uid, _ in studies)
    assert {r["instances"] for r in results} == {32} and {r["version"] for r in results} == {1}


class Orthanc:
    """Debian's Orthanc on loopback, a real PACS: its DICOM port receives, its REST API (on loopback) lists what it
    stored."""

    def __init__(self, folder: Path):
        import socket

        ports = []
        for _ in range(2):
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                ports.append(probe.getsockname()[1])
        self.dicom_port, self.http_port = ports
        config = folder / "orthanc.json"
        config.write_text(json.dumps({
            "Name": "test-pacs", "DicomAet": "PACS", "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": True,
            "HttpServerEnabled": True, "Plugins": []}))
        self.process = subprocess.Popen([ORTHANC, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return
            except OSError:
                time.sleep(0.2)
        self.close()
        raise AssertionError("Orthanc did not start: " + self.process.stderr.read().decode(errors="replace")[-2000:])

    def get(self, path: str):
        from urllib.request import urlopen

        with urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def stored_sop_instance_uids(self) -> set[str]:
        return {self.get(f"/instances/{instance}/simplified-tags")["SOPInstanceUID"]
                for instance in self.get("/instances")}

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=30)


ORTHANC = shutil.which("Orthanc")


@pytest.mark.skipif(ORTHANC is None, reason="Debian's orthanc is not installed (make test installs it where it can: "
                                            "apt-get install orthanc)")
def test_reports_are_forwarded_to_a_real_pacs(node, tmp_path):
    serving, studies = node
    pacs = Orthanc(tmp_path)
    log: list[str] = []
    running = Service(serving, tmp_path / "spool", [Peer.parse(f"{SCANNER}@127.0.0.1")], port=0, bind="127.0.0.1",
                      study_timeout=TIMEOUT, forward=Peer("PACS", "127.0.0.1", pacs.dicom_port),
                      echo=lambda message, **_: log.append(message))
    running.start()
    try:
        sent = list(studies.items())[:2]
        for _, files in sent:
            assert send(files, running.port) == [SUCCESS] * len(files)
        results = wait_for_results(running.spool.root, len(sent))
        assert [r["forwarded"] for r in results] == ["ok", "ok"]
        assert pacs.stored_sop_instance_uids() == {r["report_sop_instance_uid"] for r in results}
        [study] = [s for s in pacs.get("/studies?expand") if s["MainDicomTags"]["StudyInstanceUID"] == sent[0][0]]
        assert study["PatientMainDicomTags"]["PatientID"] == PATIENT_TAGS["PatientID"]  # filed with its patient
    finally:
        running.stop()
        pacs.close()


def test_the_allow_list_and_destinations_are_parsed_or_refused():
    assert Peer.parse("CT1@10.0.0.5").allows("CT1", "10.0.0.5")
    assert not Peer.parse("CT1@10.0.0.5").allows("CT1", "10.0.0.6")
    assert Peer.parse("*@10.0.0.5").allows("ANY", "10.0.0.5") and Peer.parse("CT1@*").allows("CT1", "1.2.3.4")
    assert Peer.parse("PACS@pacs.local:104", with_port=True) == Peer("PACS", "pacs.local", 104)
    for bad in ("CT1", "@host", "A" * 17 + "@host"):
        with pytest.raises(ValueError):
            Peer.parse(bad)
    with pytest.raises(ValueError, match="AE@HOST:PORT"):
        Peer.parse("PACS@host", with_port=True)
    with pytest.raises(ValueError, match="no --allow"):
        Service("serving", "spool", [])
