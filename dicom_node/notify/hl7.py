"""The critical-finding HL7 v2.5.1 ORU^R01 message (built and validated by hl7apy, strict), sent
over MLLP; the receiver's ACK is parsed with hl7apy and its MSA-1 checked.

The message (segments separated by carriage returns):

    MSH  sending/receiving application and facility (settings), time, ORU^R01^ORU_R01, a
         control ID derived from the SR (a retry repeats it), P, 2.5.1, UNICODE UTF-8
    PID  PID-3 the Patient ID (and its issuer), PID-5 the patient's name, from the source header
    OBR  placer and filler order number = the accession number, the procedure, the study's
         date and time, result status P (preliminary: an AI result nobody verified)
    NTE  the SR's SOP Instance UID and the study's, the disclaimer
    per critical finding, sub-ID n:
    OBX  CE  Finding (DCM 121071) = the finding's code (SCT or 99DCMNODE), abnormal flag AA
             (critically abnormal), observation method Artificial Intelligence, the model as
             equipment instance (OBX-18: name and version, the device UID)
    NTE      the critical threshold, the image, the model's weights digest
    OBX  NM  Probability (DCM 122157), UCUM "1"
    OBX  ST  Study Instance UID (DCM 110180)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import time
from collections.abc import Sequence

from hl7apy import get_default_encoding_chars
from hl7apy.base_datatypes import FT
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Group, Message, Segment
from hl7apy.exceptions import HL7apyException
from hl7apy.parser import parse_message
from pydicom import Dataset
from pydicom.valuerep import PersonName

from dicom_node.notify.critical import CriticalFinding, NotifyError
from dicom_node.settings import Settings
from structured_reports.equipment import disclaimer
from structured_reports.procedure import procedure_codes
from structured_reports.results import StudyResult

VERSION = "2.5.1"
START_BLOCK, END_BLOCK, CARRIAGE_RETURN = b"\x0b", b"\x1c", b"\x0d"
ACCEPTED = frozenset({"AA", "CA"})  # original and enhanced acknowledgement mode
MAX_ACK_BYTES = 1 << 20
CONTROL_ID_LENGTH = 20  # MSH-10 (ST 20 in v2.5.1)
CODING_SYSTEMS = {"SRT": "SCT"}  # DICOM's retired SNOMED designator, as HL7 table 0396 names it
_ENCODING = get_default_encoding_chars()


def control_id(sr_sop_instance_uid: str) -> str:
    """MSH-10 of the notification of an SR: unique per SR (one HL7 notification each), and the
    same on every retry, so that the receiver can drop a duplicate."""
    digest = hashlib.sha256(f"hl7-notification:{sr_sop_instance_uid}".encode()).hexdigest()
    return digest[:CONTROL_ID_LENGTH].upper()


def oru_r01(
    *,
    study: StudyResult,
    findings: Sequence[CriticalFinding],
    header: Dataset,
    sr_sop_instance_uid: str,
    settings: Settings,
    now: dt.datetime,
) -> str:
    """The ORU^R01 of the critical findings of a study, as ER7 text (see the module docstring).
    `header` is a source image's header (patient, study and order attributes)."""
    if not findings:
        raise ValueError("an ORU^R01 of critical findings needs at least one finding")
    message = Message("ORU_R01", version=VERSION, validation_level=VALIDATION_LEVEL.STRICT)
    _msh(message, settings, control_id(sr_sop_instance_uid), now)
    result = message.add_group("ORU_R01_PATIENT_RESULT")
    _pid(result.add_group("ORU_R01_PATIENT"), header)
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    _obr(order, study, header, now)
    order.nte.nte_1 = "1"
    order.nte.nte_3 = _text(
        f"{disclaimer(study.model)} ({study.model.label}). DICOM SR SOP Instance UID "
        f"{sr_sop_instance_uid}, Study Instance UID {study.study_instance_uid}."
    )
    for number, finding in enumerate(findings, start=1):
        _finding(order, study, finding, number, now)
    uid = order.add_group("ORU_R01_OBSERVATION").obx
    _obx(uid, 2 * len(findings) + 1, "ST", ("110180", "Study Instance UID", "DCM"), "")
    uid.obx_5 = _text(study.study_instance_uid)
    message.validate()
    return str(message.to_er7())


def _text(value: str) -> str:
    """`value` as ER7 text: the delimiters escaped the way hl7apy's text types escape them."""
    return str(FT(value).to_er7(_ENCODING))


def _components(*values: str) -> str:
    return str(_ENCODING["COMPONENT"]).join(_text(value) for value in values)


def _timestamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S+0000")


def _msh(message: Message, settings: Settings, message_id: str, now: dt.datetime) -> None:
    msh = message.msh
    msh.msh_3 = _components(settings.hl7_sending_application)
    msh.msh_4 = _components(settings.hl7_sending_facility)
    msh.msh_5 = _components(settings.hl7_receiving_application)
    msh.msh_6 = _components(settings.hl7_receiving_facility)
    msh.msh_7 = _timestamp(now)
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = message_id
    msh.msh_11 = "P"
    msh.msh_12 = VERSION
    msh.msh_18 = "UNICODE UTF-8"


def _pid(patient: Group, header: Dataset) -> None:
    """PID-3 the Patient ID (CX, with Issuer of Patient ID as assigning authority), PID-5 the
    name (DICOM family^given^middle^prefix^suffix as XPN family^given^middle^suffix^prefix)."""
    pid = patient.pid
    pid.pid_1 = "1"
    issuer = str(header.get("IssuerOfPatientID") or "")
    pid.pid_3 = _components(str(header.get("PatientID") or ""), "", "", issuer)
    name = PersonName(header.get("PatientName") or "")
    pid.pid_5 = _components(
        name.family_name, name.given_name, name.middle_name, name.name_suffix, name.name_prefix
    )


def _obr(order: Group, study: StudyResult, header: Dataset, now: dt.datetime) -> None:
    obr = order.obr
    obr.obr_1 = "1"
    accession = str(header.get("AccessionNumber") or "")
    if accession:
        obr.obr_2 = _components(accession)
        obr.obr_3 = _components(accession)
    procedure = procedure_codes(study.sources)[0]
    obr.obr_4 = _coded(
        str(procedure.value), str(procedure.meaning), str(procedure.scheme_designator)
    )
    obr.obr_7 = _study_time(header) or _timestamp(now)
    obr.obr_22 = _timestamp(now)
    obr.obr_24 = "RAD"
    obr.obr_25 = "P"


def _coded(value: str, meaning: str, scheme: str) -> str:
    """A CE: identifier^text^name of coding system (HL7 table 0396 names: SCT, DCM, LN, 99zzz)."""
    return _components(value, meaning, CODING_SYSTEMS.get(scheme, scheme))


def _study_time(header: Dataset) -> str | None:
    """StudyDate and StudyTime as an HL7 TS (the time without its fraction), or None."""
    date = str(header.get("StudyDate") or "")
    if len(date) != 8 or not date.isdigit():
        return None
    clock = str(header.get("StudyTime") or "").split(".")[0]
    return date + (clock if clock.isdigit() else "")


def _obx(
    obx: Segment, set_id: int, value_type: str, code: tuple[str, str, str], sub_id: str
) -> None:
    obx.obx_1 = str(set_id)
    obx.obx_2 = value_type
    obx.obx_3 = _coded(*code)
    if sub_id:
        obx.obx_4 = sub_id
    obx.obx_11 = "P"


def _finding(
    order: Group, study: StudyResult, finding: CriticalFinding, number: int, now: dt.datetime
) -> None:
    """Two OBX of sub-ID `number`: the coded finding (with an NTE) and its probability."""
    model = study.model
    coded = order.add_group("ORU_R01_OBSERVATION")
    obx = coded.obx
    _obx(obx, 2 * number - 1, "CE", ("121071", "Finding", "DCM"), str(number))
    obx.obx_5 = _coded(finding.code_value, finding.code_meaning, finding.code_scheme)
    obx.obx_8 = "AA"
    obx.obx_14 = _timestamp(now)
    obx.obx_17 = _coded("123110", "Artificial Intelligence", "DCM")
    obx.obx_18 = _components(model.label, "", model.device_uid, "ISO")
    coded.nte.nte_1 = "1"
    coded.nte.nte_3 = _text(
        f"{finding.label.replace('_', ' ')}: probability {finding.probability:.3f} at or above "
        f"the critical threshold {finding.threshold:.3f}, image SOP Instance UID "
        f"{finding.image_sop_instance_uid}. Model {model.label}, weights SHA-256 "
        f"{model.weights_sha256}, device UID {model.device_uid}."
    )
    probability = order.add_group("ORU_R01_OBSERVATION").obx
    _obx(probability, 2 * number, "NM", ("122157", "Probability", "DCM"), str(number))
    probability.obx_5 = f"{finding.probability:.6f}"
    probability.obx_6 = _components("1", "no units", "UCUM")


# ---- MLLP ------------------------------------------------------------------------------------


def frame(message: bytes) -> bytes:
    """An MLLP block: start block 0x0B, the message, end block 0x1C and carriage return 0x0D."""
    return START_BLOCK + message + END_BLOCK + CARRIAGE_RETURN


def send_mllp(host: str, port: int, message: str, timeout: float) -> None:
    """Send `message` (ER7) over MLLP and check the receiver's ACK: MSA-1 AA or CA, for this
    message's control ID. Raises `NotifyError` otherwise (AE/AR with the receiver's MSA-3 text),
    on a network error, or when no ACK came within `timeout` seconds."""
    where = f"HL7 receiver {host}:{port}"
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(frame(message.encode("utf-8")))
            reply = _read_block(sock, deadline, where)
    except OSError as exc:
        raise NotifyError(f"{where} unreachable or silent: {exc}") from None
    check_ack(reply.decode("utf-8", errors="replace"), _message_id(message), where)


def _read_block(sock: socket.socket, deadline: float, where: str) -> bytes:
    """The content of the first MLLP block the peer sends."""
    buffer = b""
    while END_BLOCK + CARRIAGE_RETURN not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no ACK in time")
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise NotifyError(f"{where} closed the connection without an ACK")
        buffer += chunk
        if len(buffer) > MAX_ACK_BYTES:
            raise NotifyError(f"{where} sent more than {MAX_ACK_BYTES} bytes without an ACK")
    block = buffer.split(END_BLOCK + CARRIAGE_RETURN, 1)[0]
    return block[block.find(START_BLOCK) + 1 :] if START_BLOCK in block else block


def _parse(text: str) -> Message:
    lines = text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    return parse_message(lines, find_groups=False, validation_level=VALIDATION_LEVEL.TOLERANT)


def _message_id(message: str) -> str:
    return str(_parse(message).msh.msh_10.to_er7())


def check_ack(text: str, message_id: str, where: str = "HL7 receiver") -> None:
    """Raise `NotifyError` unless `text` is an ACK accepting message `message_id` (MSA-1 AA or
    CA, MSA-2 the control ID); AE, AR, CE and CR are failures with the receiver's MSA-3 text."""
    try:
        msa = _parse(text).msa
        code = str(msa.msa_1.to_er7())
        acknowledged = str(msa.msa_2.to_er7())
        reason = str(msa.msa_3.to_er7())
    except (HL7apyException, AttributeError, IndexError) as exc:
        raise NotifyError(f"{where} answered something that is not an HL7 ACK: {exc}") from None
    if code not in ACCEPTED:
        answered = f"{where} answered {code or 'no MSA-1'}"
        raise NotifyError(f"{answered}: {reason or 'no text'}", summary=answered)
    if acknowledged and acknowledged != message_id:
        raise NotifyError(f"{where} acknowledged message {acknowledged}, not {message_id}")
