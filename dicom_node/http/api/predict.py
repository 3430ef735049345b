"""`POST /predict`: one radiograph (PNG, JPEG or DICOM) read by this process's model, nothing
stored (pipeline/predict.py), each prediction audited with the user."""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from dicom_node.audit import Event
from dicom_node.http.api.deps import context, record, require
from dicom_node.http.api.models import Code, Finding, Model, Problem
from dicom_node.http.api.models import Prediction as PredictionBody
from dicom_node.http.auth import Principal
from dicom_node.pipeline.predict import Prediction, UploadError, predict

MAX_UPLOAD_BYTES = 64 << 20  # the file itself
FORM_OVERHEAD = 64 << 10  # what multipart adds around it: boundaries, part headers
FIELD = "file"
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": Problem, "description": text}
    for code, text in {
        401: "no token and not signed in",
        403: "the role may not view",
        411: "no Content-Length",
        413: f"over {MAX_UPLOAD_BYTES >> 20} MiB",
        422: "not a readable PNG, JPEG or DICOM, or an image the node does not analyse",
        503: "no model in this process (a receive-only node)",
    }.items()
}
UPLOAD = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {FIELD: {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}

router = APIRouter(tags=["predict"])


@router.post("/predict", responses=ERRORS, openapi_extra=UPLOAD)
async def predict_upload(
    request: Request, principal: Annotated[Principal, Depends(require("view"))]
) -> PredictionBody:
    """The model's findings on the uploaded radiograph (multipart field `file`), preprocessed
    as the node preprocesses a received image, with the Grad-CAM picture."""
    services = context(request).services
    if services is None:
        raise HTTPException(
            503, "no model in this process: send predictions to a node with workers"
        )
    data, filename = await _upload(request)
    try:
        prediction = await run_in_threadpool(predict, services, data, filename)
    except UploadError as exc:
        raise HTTPException(422, str(exc)) from exc
    header = prediction.header
    await run_in_threadpool(
        record,
        request,
        Event.STUDY_VIEWED,
        principal,
        study_instance_uid=str(header.get("StudyInstanceUID", "")) or None,
        sop_instance_uid=str(header.get("SOPInstanceUID", "")) or None,
        patient_id=str(header.get("PatientID", "")) or None,
        model=prediction.model.label,
        detail=f"predict (upload, {prediction.kind}): {_summary(prediction)}",
    )
    return _body(prediction)


async def _upload(request: Request) -> tuple[bytes, str | None]:
    """The uploaded file's bytes, within MAX_UPLOAD_BYTES (by Content-Length before anything is
    read, then by what was read)."""
    length = request.headers.get("content-length", "")
    if not length.isdigit():
        raise HTTPException(411, "send the upload with a Content-Length (multipart/form-data)")
    too_large = f"the upload is over {MAX_UPLOAD_BYTES >> 20} MiB"
    if int(length) > MAX_UPLOAD_BYTES + FORM_OVERHEAD:
        raise HTTPException(413, too_large)
    async with request.form(max_files=1, max_fields=4) as form:
        upload = form.get(FIELD)
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, f"send the image as the multipart/form-data field {FIELD!r}")
        data = await upload.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise HTTPException(413, too_large)
        return data, upload.filename


def _summary(prediction: Prediction) -> str:
    present = [f.label for f in prediction.findings if f.present]
    return ", ".join(present) if present else "no finding above threshold"


def _body(prediction: Prediction) -> PredictionBody:
    identity = prediction.model
    return PredictionBody(
        findings=[
            Finding(
                label=f.label,
                code=Code(value=code.value, scheme=code.scheme, meaning=code.meaning),
                probability=f.probability,
                threshold=f.threshold,
                decision="present" if f.present else "absent",
            )
            for f, code in zip(prediction.findings, prediction.codes, strict=True)
        ],
        model=Model(
            name=identity.name,
            version=identity.version,
            weights_sha256=identity.weights_sha256,
            synthetic_demo=identity.synthetic_demo,
        ),
        heatmap_of=list(prediction.heatmap_of),
        gradcam_png=base64.b64encode(prediction.gradcam_png).decode("ascii"),
    )
