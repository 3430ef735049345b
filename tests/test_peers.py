"""The integration harness itself, against the real peers: Orthanc and DCMTK over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
)

from tests.peers import (
    ECHOSCU_BIN,
    FORWARD_CHEST_LUA,
    LOOPBACK,
    ORTHANC_BIN,
    STORESCP_BIN,
    STORESCU_BIN,
    WEBVIEWER_PLUGIN,
    OrthancServer,
    OrthancStartError,
    StoreSCP,
    echoscu,
    free_port,
    list_study_instances,
    make_chest_radiograph,
    make_comprehensive_3d_sr,
    make_secondary_capture,
    missing_binaries,
    send_study,
    storescu,
    upload_datasets,
    upload_files,
    wait_for_port,
    wait_for_study_instances,
    write_dataset,
)

_missing_orthanc = missing_binaries(ORTHANC_BIN)
if not WEBVIEWER_PLUGIN.exists():
    _missing_orthanc.append(str(WEBVIEWER_PLUGIN))
_missing_dcmtk = missing_binaries(STORESCP_BIN, STORESCU_BIN, ECHOSCU_BIN)

needs_orthanc = pytest.mark.skipif(
    bool(_missing_orthanc),
    reason=f"Orthanc not installed (apt: orthanc, orthanc-webviewer): missing {_missing_orthanc}",
)
needs_dcmtk = pytest.mark.skipif(
    bool(_missing_dcmtk), reason=f"DCMTK not installed (apt: dcmtk): missing {_missing_dcmtk}"
)

pytestmark = pytest.mark.integration

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _ct_small() -> Path:
    """pydicom's bundled CT_small.dcm: any non-chest image."""
    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)
    return Path(path)


@pytest.fixture(scope="module")
def node_scp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """A DCMTK storescp standing in for the node (AE title DICOMNODE)."""
    if _missing_dcmtk:
        pytest.skip(f"DCMTK not installed (apt: dcmtk): missing {_missing_dcmtk}")
    with StoreSCP(tmp_path_factory.mktemp("node-inbox"), aet="DICOMNODE") as scp:
        yield scp


@pytest.fixture(scope="module")
def orthanc(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[OrthancServer]:
    """One Orthanc for the module; its DICOMNODE modality is `node_scp` (when DCMTK is here)."""
    if _missing_orthanc:
        pytest.skip(
            f"Orthanc not installed (apt: orthanc, orthanc-webviewer): missing {_missing_orthanc}"
        )
    node_port = free_port() if _missing_dcmtk else request.getfixturevalue("node_scp").port
    modalities = {"DICOMNODE": ("DICOMNODE", LOOPBACK, node_port)}
    with OrthancServer(modalities=modalities, workdir=tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def test_free_port_is_bindable_and_wait_for_port_times_out() -> None:
    """free_port gives a port nobody listens on; wait_for_port gives up on it with TimeoutError."""
    port = free_port()
    assert 1024 <= port <= 65535
    with pytest.raises(TimeoutError):
        wait_for_port(port, timeout=0.3)


@needs_orthanc
def test_orthanc_start_failure_raises_and_prints_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A configuration Orthanc rejects gives OrthancStartError, its log on stderr, no process."""
    server = OrthancServer(config_overrides={"DicomPort": "not-a-port"}, workdir=tmp_path)
    with pytest.raises(OrthancStartError, match="exited with status"), server:
        pytest.fail("Orthanc should not have started")
    assert "must be an integer" in capsys.readouterr().err
    assert server.returncode not in (None, 0)


@needs_orthanc
def test_orthanc_starts_and_answers_system(orthanc: OrthancServer) -> None:
    """Orthanc runs with the template's AE title on the harness's ports and answers /system."""
    system = orthanc.api.get_system()
    assert system["DicomAet"] == orthanc.aet == "ORTHANC"
    assert system["DicomPort"] == orthanc.dicom_port
    assert system["HttpPort"] == orthanc.http_port
    assert orthanc.api.is_alive()
    assert (orthanc.storage_dir / "index").exists()  # ${ORTHANC_STORAGE_DIR} was expanded


@needs_orthanc
def test_orthanc_has_the_node_modality(orthanc: OrthancServer, node_scp: StoreSCP) -> None:
    """The modalities passed to the harness replace the template's, with host and port."""
    config = orthanc.api.modalities.get_configuration("DICOMNODE")
    assert config["AET"] == "DICOMNODE"
    assert config["Host"] == LOOPBACK
    assert config["Port"] == node_scp.port


@needs_orthanc
def test_template_node_modality_comes_from_environment(tmp_path: Path) -> None:
    """Without harness modalities, DICOMNODE_HOST/DICOMNODE_PORT fill the template's entry."""
    env = {"DICOMNODE_HOST": "localhost", "DICOMNODE_PORT": "11112"}
    with OrthancServer(env=env, workdir=tmp_path, graceful_stop=False) as orthanc:
        config = orthanc.api.modalities.get_configuration("DICOMNODE")
    assert (config["AET"], config["Host"], config["Port"]) == ("DICOMNODE", "localhost", 11112)
    assert config["AllowStore"] is True
    assert config["AllowFind"] is False


@needs_orthanc
def test_rest_upload_appears_in_study_listing(orthanc: OrthancServer, tmp_path: Path) -> None:
    """A DX file and a CT file uploaded by REST are listed with SOP class, modality and UIDs."""
    dx = make_chest_radiograph("DX")
    ids = upload_files(orthanc.api, [write_dataset(dx, tmp_path / "dx.dcm")])
    assert len(ids) == 1

    [stored] = list_study_instances(orthanc.api, dx.StudyInstanceUID)
    assert stored.orthanc_id == ids[0]
    assert stored.sop_instance_uid == dx.SOPInstanceUID
    assert stored.sop_class_uid == DigitalXRayImageStorageForPresentation
    assert stored.series_instance_uid == dx.SeriesInstanceUID
    assert stored.modality == "DX"
    assert stored.origin == "RestApi"
    assert stored.remote_aet is None

    ct = dcmread(_ct_small())
    upload_files(orthanc.api, [_ct_small()])
    [ct_stored] = list_study_instances(orthanc.api, ct.StudyInstanceUID)
    assert ct_stored.modality == "CT"
    assert list_study_instances(orthanc.api, "1.2.3.4.5.6.7.8.9.0") == []


@needs_orthanc
@needs_dcmtk
def test_echoscu_to_orthanc_succeeds(orthanc: OrthancServer) -> None:
    """DCMTK echoscu gets a successful C-ECHO from Orthanc's DICOM port."""
    result = echoscu(port=orthanc.dicom_port, aet=orthanc.aet, calling="DICOMNODE")
    assert result.returncode == 0, result.stderr


@needs_orthanc
@needs_dcmtk
def test_orthanc_accepts_chest_images_and_node_results_by_cstore(
    orthanc: OrthancServer, tmp_path: Path
) -> None:
    """Orthanc accepts CR, DX, Secondary Capture and Comprehensive 3D SR by C-STORE."""
    cr = make_chest_radiograph("CR")
    study_uid = cr.StudyInstanceUID
    datasets = {
        "cr.dcm": cr,
        "dx.dcm": make_chest_radiograph("DX", study_instance_uid=study_uid),
        "sc.dcm": make_secondary_capture(study_instance_uid=study_uid),
        "sr.dcm": make_comprehensive_3d_sr(study_instance_uid=study_uid),
    }
    files = [write_dataset(ds, tmp_path / name) for name, ds in datasets.items()]

    result = storescu(files, port=orthanc.dicom_port, aet=orthanc.aet, calling="DICOMNODE")
    assert result.returncode == 0, result.stderr

    stored = wait_for_study_instances(orthanc.api, study_uid, 4, timeout=10)
    assert {(i.sop_class_uid, i.modality) for i in stored} == {
        (ComputedRadiographyImageStorage, "CR"),
        (DigitalXRayImageStorageForPresentation, "DX"),
        (SecondaryCaptureImageStorage, "OT"),
        (COMPREHENSIVE_3D_SR, "SR"),
    }
    assert {(i.origin, i.remote_aet) for i in stored} == {("DicomProtocol", "DICOMNODE")}


@needs_orthanc
@needs_dcmtk
def test_orthanc_pushes_study_to_storescp(orthanc: OrthancServer, node_scp: StoreSCP) -> None:
    """REST /modalities/DICOMNODE/store makes Orthanc C-STORE a study into the storescp."""
    study_uid = make_chest_radiograph().StudyInstanceUID
    images = [make_chest_radiograph("DX", study_instance_uid=study_uid) for _ in range(2)]
    upload_datasets(orthanc.api, images)
    before = len(node_scp.received())

    send_study(orthanc.api, modality="DICOMNODE", study_instance_uid=study_uid, timeout=30)

    # synchronous send + storescp's synchronous ledger: the files are listed already
    new_files = node_scp.received()[before:]
    assert len(new_files) == 2
    assert all(path.is_relative_to(node_scp.output_dir) for path in new_files)
    assert all(path.parent.name == f"study_{study_uid}" for path in new_files)
    assert {dcmread(path).SOPInstanceUID for path in new_files} == {
        ds.SOPInstanceUID for ds in images
    }


@needs_orthanc
def test_webviewer_plugin_is_loaded(orthanc: OrthancServer) -> None:
    """The Orthanc Web Viewer plugin from the Debian package is loaded and serves its app."""
    assert orthanc.api.has_loaded_plugin("web-viewer")
    plugin = orthanc.api.get_json("plugins/web-viewer")
    assert plugin["ID"] == "web-viewer"
    assert orthanc.api.get("web-viewer/app/viewer.html").status_code == 200

    [instance_id] = upload_datasets(orthanc.api, [make_chest_radiograph("DX")])
    series_id = orthanc.api.instances.get(instance_id).series.orthanc_id
    series = orthanc.api.get_json(f"web-viewer/series/{series_id}")  # what the viewer loads
    assert series["Slices"]


@needs_orthanc
@needs_dcmtk
def test_forward_chest_lua_forwards_only_new_chest_images(tmp_path: Path) -> None:
    """forward-chest.lua sends stable CR/DX instances to the node once; CT, SR and SC stay."""
    with (
        StoreSCP(tmp_path / "node-inbox", aet="DICOMNODE") as scp,
        OrthancServer(
            modalities={"DICOMNODE": ("DICOMNODE", LOOPBACK, scp.port)},
            lua_scripts=[FORWARD_CHEST_LUA],
            workdir=tmp_path / "orthanc",
            graceful_stop=False,
        ) as orthanc,
    ):
        first_dx = make_chest_radiograph("DX")
        study_uid = first_dx.StudyInstanceUID
        upload_datasets(orthanc.api, [first_dx])
        upload_files(orthanc.api, [_ct_small()])

        [first] = scp.wait_for(1, timeout=20)
        assert dcmread(first).SOPInstanceUID == first_dx.SOPInstanceUID

        # the node's results and a second view arrive in the same study: only the view goes out
        second_cr = make_chest_radiograph("CR", study_instance_uid=study_uid)
        upload_datasets(
            orthanc.api,
            [
                make_comprehensive_3d_sr(study_instance_uid=study_uid),
                make_secondary_capture(study_instance_uid=study_uid),
                second_cr,
            ],
        )
        files = scp.wait_for(2, timeout=20)
        assert dcmread(files[1]).SOPInstanceUID == second_cr.SOPInstanceUID

        stored = list_study_instances(orthanc.api, study_uid)
        forwarded = {
            i.modality
            for i in stored
            if orthanc.api.instances.has_metadata(i.orthanc_id, "ForwardedToNode")
        }
        assert forwarded == {"DX", "CR"}
        assert len(scp.received()) == 2  # the CT study and the results were not sent
        assert "forward-chest: sent 1 instance(s)" in orthanc.log_text()
