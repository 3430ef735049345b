"""Several models on one node: each reads the images of its scope (`dicom_node.serves`), each
result names its model, and a new version of one model's result leaves the other's standing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.domain import ModelScope
from dicom_node.model.bundle import BundleError, load_bundle
from dicom_node.node import Node
from dicom_node.store.jobs import wait_finished
from dicom_node.store.schema import Result, ResultObject, Skip
from dicom_node.testing import TINY_LABELS, node_settings, tiny_bundle
from dicom_node.training.datasets import CXR14_LABELS
from tests.conftest import chest_image
from tests.peers import StoreSCP, storescu
from tests.test_pipeline import _srs_of
from tests.test_sr_content import named
from tests.test_zoo import write_zoo_bundle

pytestmark = pytest.mark.integration
LATERAL = {"views": ["LL", "RL", "LATERAL"]}


def lateral_bundle(path: Path) -> Path:
    """The model-zoo ResNet bundle, named as a lateral-view model and serving lateral chest
    CR/DX images only."""
    write_zoo_bundle(path)
    meta_path = path / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["name"] = "cxr-lateral-resnet"
    meta["dicom_node"] = {"serves": LATERAL}
    meta_path.write_text(json.dumps(meta))
    return path


def test_a_bundle_states_the_images_it_serves(tmp_path: Path) -> None:
    """`serves` narrows or widens the chest radiograph default; what it leaves out keeps the
    default; an unknown key is refused by name."""
    bundle = load_bundle(lateral_bundle(tmp_path / "lateral"))
    assert bundle.scope == ModelScope(views=("LL", "RL", "LATERAL"))
    assert bundle.scope.modalities == ("CR", "DX")
    assert load_bundle(write_zoo_bundle(tmp_path / "plain")).scope == ModelScope()
    meta_path = tmp_path / "lateral" / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["dicom_node"]["serves"]["laterality"] = ["L"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"serves' has unknown keys \['laterality'\]"):
        load_bundle(tmp_path / "lateral")


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    with StoreSCP(tmp_path_factory.mktemp("pacs"), aet="PACS") as scp:
        yield scp


def _model_of(sr: Dataset) -> str:
    names = {named(group, "111001")[0].TextValue for group in named(sr, "125007")}
    assert len(names) == 1
    return names.pop()


def test_each_model_reads_its_images_and_reports_them_in_its_own_sr(
    tmp_path: Path, pacs: StoreSCP
) -> None:
    """A node with a frontal model (the first) and a lateral model: a PA, a lateral and a knee
    image of one study. The PA is read by the first model only, the lateral by the second; each
    model's SR names it and holds only its image's findings; the knee image, read by neither,
    is recorded as skipped with both models' reasons. A later PA of the same study gives a new
    version of the frontal SR, replacing the frontal one only: the lateral SR stays live."""
    frontal = tiny_bundle(tmp_path / "frontal").path
    lateral = lateral_bundle(tmp_path / "lateral")
    destination = {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port}
    settings = node_settings(
        tmp_path / "node",
        model_bundle=frontal,
        model_bundles=[lateral],
        destinations=[destination],
    )
    study_uid = generate_uid()
    images = {
        "pa": chest_image(study_uid=study_uid, view_position="PA", seed=1),
        "ll": chest_image(study_uid=study_uid, view_position="LL", seed=2),
        "knee": chest_image(study_uid=study_uid, view_position="AP", seed=3),
    }
    images["knee"].BodyPartExamined = "KNEE"
    paths = []
    for name, ds in images.items():
        paths.append(tmp_path / f"{name}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    uid = {name: str(ds.SOPInstanceUID) for name, ds in images.items()}
    with Node(settings) as node:
        storescu(paths, port=node.port, aet=settings.ae_title)
        job = wait_finished(node.sessions, study_uid, timeout=60)
        assert job.state == "done", job.detail
        srs = {_model_of(sr): sr for sr in _srs_of(pacs, study_uid, 2)}
        assert set(srs) == {"tiny", "cxr-lateral-resnet"}
        assert len(named(srs["tiny"], "125007")) == len(TINY_LABELS)
        assert len(named(srs["cxr-lateral-resnet"], "125007")) == len(CXR14_LABELS)
        with node.sessions() as session:
            read = {
                (r.sop_instance_uid, r.model_name)
                for r in session.scalars(select(Result).where(Result.job_id == job.id))
            }
            skips = {s.sop_instance_uid: s.reason for s in session.scalars(select(Skip))}
        assert read == {(uid["pa"], "tiny"), (uid["ll"], "cxr-lateral-resnet")}
        assert set(skips) == {uid["knee"]}
        assert "tiny: body part KNEE is not chest" in skips[uid["knee"]]
        assert "cxr-lateral-resnet: body part KNEE" in skips[uid["knee"]]

        second = chest_image(study_uid=study_uid, view_position="PA", seed=4)
        second.save_as(tmp_path / "pa2.dcm", enforce_file_format=True)
        storescu([tmp_path / "pa2.dcm"], port=node.port, aet=settings.ae_title)
        later = wait_finished(node.sessions, study_uid, after=job.id, timeout=60)
        assert later.state == "done", later.detail
        with node.sessions() as session:
            rows = list(session.scalars(select(ResultObject).where(ResultObject.kind == "sr")))
    by_model: dict[str | None, list[ResultObject]] = {}
    for row in rows:
        by_model.setdefault(row.model_name, []).append(row)
    frontal_srs = by_model["tiny"]
    assert len(frontal_srs) == 2
    assert frontal_srs[1].predecessor_sop_instance_uid == frontal_srs[0].sop_instance_uid
    assert frontal_srs[0].retracted_by is not None  # withdrawn by the new version's note
    [lateral_sr] = by_model["cxr-lateral-resnet"]  # the same content: sent again, not replaced
    assert lateral_sr.retracted_by is None
