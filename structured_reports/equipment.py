"""Who produced a result: algorithm identification (TID 4019), device observer, contributing
equipment.

The model identity (bundle name, version, SHA-256 of the weights) travels into every object: the
device UID changes with the weights, so results of different model versions never share a device.
"""

from __future__ import annotations

from highdicom import ContributingEquipment
from highdicom.sr import (
    AlgorithmIdentification,
    DeviceObserverIdentifyingAttributes,
    ObserverContext,
)
from pydicom import Dataset
from pydicom.sr.codedict import codes as dicom_codes

from structured_reports import codes
from structured_reports.results import ModelIdentity

DISCLAIMER = "AI result - not for diagnostic use"
SYNTHETIC_DISCLAIMER = "AI result (synthetic demo model) - not for diagnostic use"


def disclaimer(model: ModelIdentity) -> str:
    """The warning every object carries; stronger for a synthetic demonstration model."""
    return SYNTHETIC_DISCLAIMER if model.synthetic_demo else DISCLAIMER


def algorithm_parameters(model: ModelIdentity, *, threshold: float | None = None) -> list[str]:
    """TID 4019 'Algorithm Parameters' values: the weights digest and the decision threshold."""
    parameters = [f"weights_sha256={model.weights_sha256}"]
    if threshold is not None:
        parameters.append(f"threshold={threshold:g}")
    return parameters


def algorithm_identification(
    model: ModelIdentity, *, threshold: float | None = None
) -> AlgorithmIdentification:
    """TID 4019 Algorithm Identification of the model (name, version, family, parameters)."""
    return AlgorithmIdentification(
        name=model.name,
        version=model.version,
        parameters=algorithm_parameters(model, threshold=threshold),
        family=codes.ALGORITHM_FAMILY.coded(),
        manufacturer=model.manufacturer,
    )


def observer_device_context(model: ModelIdentity) -> ObserverContext:
    """TID 1004 Device Observer: the model, identified by its device UID."""
    return ObserverContext(
        observer_type=dicom_codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=model.device_uid,
            name=model.label,
            manufacturer_name=model.manufacturer,
            model_name=model.name,
        ),
    )


def contributing_equipment(
    model: ModelIdentity, *, institution_name: str | None = None
) -> ContributingEquipment:
    """Contributing Equipment item (purpose: Processing Equipment) describing the model.

    `General Equipment` of the object itself carries the Device UID (`apply_general_equipment`).
    """
    return ContributingEquipment(
        manufacturer=model.manufacturer,
        purpose_of_reference=codes.PROCESSING_EQUIPMENT.coded(),
        manufacturer_model_name=model.name,
        software_versions=model.version,
        # Device UID is not an attribute of the Contributing Equipment Sequence (dciodvfy, 2026):
        # the serial number of an algorithm build is its device UID.
        device_serial_number=model.device_uid,
        institution_name=institution_name,
        contribution_description=_contribution_description(model),
    )


def apply_general_equipment(ds: Dataset, model: ModelIdentity) -> None:
    """Fill the optional General Equipment attributes of an object the model produced."""
    ds.ManufacturerModelName = model.name
    ds.SoftwareVersions = model.version
    ds.DeviceUID = model.device_uid


def apply_series_datetime(ds: Dataset) -> None:
    """Series Date and Time of a result: when it was made (its content or creation time), so
    that viewers file the result series under its date."""
    ds.SeriesDate = ds.get("ContentDate") or ds.get("InstanceCreationDate")
    ds.SeriesTime = ds.get("ContentTime") or ds.get("InstanceCreationTime")


def _contribution_description(model: ModelIdentity) -> str:
    text = (
        f"{model.label}, device UID {model.device_uid}, weights sha256 {model.weights_sha256}: "
        f"{disclaimer(model)}"
    )
    if model.description:
        text = f"{text}. {model.description}"
    return text[:1024]  # Contribution Description is ST: 1024 characters at most
