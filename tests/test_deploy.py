"""The deployment files, validated offline and tied to the node (docs/admin.md).

* the Dockerfile: layers heaviest first, no Debian package, a non-root user, the health check on
  /readyz, a build context (.dockerignore) that holds what it copies;
* Compose (deploy/compose) against the Compose Specification's JSON schema (the copy
  check-jsonschema vendors), with its variables interpolated from env.example;
* Kubernetes (deploy/k8s): each overlay rendered by the small Kustomize subset below (and compared
  with `kubectl kustomize` where kubectl exists), every manifest validated by kubernetes-validate
  against the Kubernetes schemas in strict mode;
* systemd (deploy/systemd): the hardening options, `systemd-analyze verify` where it exists;
* across all of them: every DICOM_NODE_* variable is a setting, and the environment of each
  process loads (`load_settings`); every port, image, volume, probe path and command is the one
  the image and the settings use; the NetworkPolicy admits DICOM from the configured peers only;
* every transfer syntax the SCP accepts for radiographs decodes without the GPL-3.0 decoder
  (pylibjpeg-libjpeg, the optional extra `gpl-decoders`).

Skipped parts, where a tool is missing: promtool, kubectl, systemd-analyze.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.resources
import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import yaml
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_node.dimse.scp import TRANSFER_SYNTAXES
from dicom_node.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "deploy" / "compose"
K8S = ROOT / "deploy" / "k8s"
SYSTEMD = ROOT / "deploy" / "systemd"
OVERLAYS = ("cpu", "gpu")
# The oldest and the newest Kubernetes minor whose schemas kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
IMAGE = "dicom-node"  # the repository name of the image the Dockerfile builds
VARIANTS = ("cpu", "cuda")  # TORCH_VARIANT: the tag suffix of each image
GPU = "nvidia.com/gpu"
# The hardening every systemd service of the node has (systemd.exec(5)).
HARDENING = {
    "User": "dicom-node",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "CapabilityBoundingSet": "",
    "RestrictNamespaces": "yes",
    "SystemCallFilter": "@system-service",
}


# ---- the Dockerfile -------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or (not current and not line.strip()):
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        keyword, _, rest = current.strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    return instructions


def runtime_stage() -> list[tuple[str, str]]:
    """The instructions of the last stage, the image that runs."""
    instructions = dockerfile()
    start = max(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    return instructions[start:]


def image_environment() -> dict[str, str]:
    """The image's ENV: what every container starts with."""
    environment: dict[str, str] = {}
    for keyword, rest in runtime_stage():
        if keyword == "ENV":
            environment.update(item.split("=", 1) for item in shlex.split(rest))
    return environment


def image_ports() -> set[int]:
    """The ports the image EXPOSEs."""
    return {
        int(p.split("/")[0]) for k, rest in runtime_stage() if k == "EXPOSE" for p in rest.split()
    }


def image_user() -> tuple[int, int]:
    """The numeric user and group the image runs as."""
    user = next(rest for keyword, rest in runtime_stage() if keyword == "USER")
    uid, _, gid = user.partition(":")
    return int(uid), int(gid)


def image_volumes() -> list[str]:
    """The image's VOLUME paths."""
    return [rest for keyword, rest in runtime_stage() if keyword == "VOLUME"]


def in_build_context(path: str) -> bool:
    """Whether .dockerignore leaves `path` in the build context (the last matching pattern wins;
    a pattern that matches a parent folder matches what is inside)."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [x.strip() for x in lines if x.strip() and not x.startswith("#")]
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatchcase(candidate, glob) for candidate in candidates):
            included = negated
    return included


def test_the_image_installs_torch_then_the_dependencies_then_the_source() -> None:
    """Layers run from the heaviest: torch (cpu or cuda by TORCH_VARIANT), the dependencies from
    pyproject.toml alone, the model bundle, then the project; no Debian package is installed."""
    stage = runtime_stage()
    position = {
        name: i for i, (keyword, rest) in enumerate(stage) for name in _layer(keyword, rest)
    }
    assert position["torch"] < position["dependencies"] < position["models"] < position["project"]
    torch_step = stage[position["torch"]][1]
    for variant in VARIANTS:
        assert f"{variant})" in torch_step, f"TORCH_VARIANT={variant} is not handled"
    assert "download.pytorch.org/whl/cpu" in torch_step
    package_manager = re.compile(r"\b(apt-get|apt|dpkg|apk|yum|dnf)\b")
    assert not any(package_manager.search(rest) for keyword, rest in stage if keyword == "RUN")
    assert ("ARG", "TORCH_VARIANT=cpu") in stage


def _layer(keyword: str, rest: str) -> list[str]:
    """Which of the four layers an instruction is, if any."""
    if keyword == "RUN" and 'pip install "torch==' in rest:
        return ["torch"]
    if keyword == "RUN" and "--requirement" in rest and "pyproject.toml" in rest:
        return ["dependencies"]
    if keyword == "COPY" and rest.startswith("models/"):
        return ["models"]
    if keyword == "RUN" and "--no-deps" in rest and ".whl" in rest:
        return ["project"]
    return []


def test_the_image_runs_as_a_dedicated_user_with_the_health_check_on_readyz() -> None:
    """A numeric non-root USER; the HEALTHCHECK runs scripts/healthcheck.py, which asks /readyz
    on DICOM_NODE_HTTP_PORT; the image's ports are the settings' DICOM and HTTP ports."""
    uid, gid = image_user()
    assert uid >= 1000 and gid >= 1000
    healthcheck = next(rest for keyword, rest in runtime_stage() if keyword == "HEALTHCHECK")
    assert '"/opt/dicom-node/scripts/healthcheck.py"' in healthcheck
    script = (ROOT / "scripts" / "healthcheck.py").read_text()
    assert "/readyz" in script and "DICOM_NODE_HTTP_PORT" in script
    settings = check_environment(image_environment(), "the Dockerfile's ENV")
    assert image_ports() == {settings.port, settings.http_port}
    assert any(str(settings.spool_dir).startswith(volume) for volume in image_volumes())


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_else() -> None:
    """Every COPY source exists and .dockerignore keeps it; the virtual environment, git, tests,
    benchmarks and deployment files stay out of the context. The default model bundle is copied
    to where DICOM_NODE_MODEL_BUNDLE points."""
    copies = [shlex.split(rest) for keyword, rest in dockerfile() if keyword == "COPY"]
    sources = [s for args in copies if not args[0].startswith("--") for s in args[:-1]]
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
        assert in_build_context(source), f"COPY {source}: excluded by .dockerignore"
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_deploy.py", "bench/common.py"):
        assert not in_build_context(path), f"{path} is sent to the build context"
    assert not in_build_context("dicom_node/__pycache__/cli.cpython-311.pyc")
    bundle = image_environment()["DICOM_NODE_MODEL_BUNDLE"]
    assert any(args[-1] == bundle for args in copies)
    assert (ROOT / "models" / Path(bundle).name / "configs" / "metadata.json").is_file()


def test_the_node_runs_no_external_program() -> None:
    """Why the image installs no Debian package (DCMTK was installed before): nothing in the
    installed packages starts a process or looks a program up. A change that does must add the
    program to the Dockerfile."""
    pattern = re.compile(r"\b(subprocess|os\.system|os\.exec\w*|os\.spawn\w*|shutil\.which)\b")
    for package in ("dicom_node", "structured_reports"):
        for path in (ROOT / package).rglob("*.py"):
            found = pattern.search(path.read_text())
            assert found is None, f"{path.relative_to(ROOT)} uses {found.group(0) if found else ''}"


def test_the_wheel_carries_every_data_file_of_the_packages() -> None:
    """The image installs the project from a wheel, not in place: every non-Python file in the
    packages must be matched by [tool.setuptools.package-data]."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package, globs in config["package-data"].items():
        folder = ROOT / package
        for path in folder.rglob("*"):
            relative = path.relative_to(folder).as_posix()
            if not path.is_file() or path.suffix in {".py", ".pyc"} or "__pycache__" in relative:
                continue
            assert any(fnmatch.fnmatch(relative, glob) for glob in globs), (
                f"{package}/{relative} is not in package-data: the image would lack it"
            )


# ---- the settings every process gets -------------------------------------------------------


def check_environment(environment: Mapping[str, str], where: str) -> Settings:
    """Every DICOM_NODE_* variable is a setting, and together they load (values valid)."""
    node = {k: v for k, v in environment.items() if k.startswith(ENV_PREFIX)}
    unknown = sorted(k for k in node if k[len(ENV_PREFIX) :].lower() not in Settings.model_fields)
    assert not unknown, f"{where}: {unknown} are no settings"
    return load_settings(environ=node)


# ---- Compose ----------------------------------------------------------------------------------

_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|(?P<plain>\w+))"
)


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an environment file (comments and blank lines skipped)."""
    lines = [x.strip() for x in path.read_text().splitlines()]
    return dict(x.split("=", 1) for x in lines if x and not x.startswith("#"))


def interpolate(value: Any, variables: Mapping[str, str], used: set[str]) -> Any:
    """Compose's interpolation of ${VAR}, ${VAR:-default}, ${VAR:?error} and $$ in every string;
    a variable without a value and without a default fails (Compose would put an empty string)."""
    if isinstance(value, dict):
        return {k: interpolate(v, variables, used) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, variables, used) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name, op, arg = match.group("name") or match.group("plain"), match.group("op"), match["arg"]
        used.add(name)
        given = variables.get(name)
        unset = given is None or (given == "" and op is not None and op.startswith(":"))
        if unset and op in (":-", "-"):
            return str(arg)
        assert not unset or op is None, f"${{{name}}} must be set: {arg}"
        assert given is not None, f"${{{name}}} has no value in env.example and no default"
        return given

    return _VARIABLE.sub(one, value)


def compose_file(name: str, used: set[str] | None = None) -> dict[str, Any]:
    """A Compose file as Compose reads it: YAML (anchors merged), variables from env.example."""
    raw = yaml.safe_load((COMPOSE / name).read_text())
    return interpolate(raw, env_file(COMPOSE / "env.example"), set() if used is None else used)


def merged(base: Any, override: Any) -> Any:
    """An override file over a base: mappings merged key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        result = dict(base)
        for key, value in override.items():
            result[key] = merged(base[key], value) if key in base else value
        return result
    return copy.deepcopy(override)


def compose_models() -> dict[str, dict[str, Any]]:
    """The two ways to run it: CPU workers, and with compose.gpu.yaml over it."""
    base = compose_file("compose.yaml")
    return {"cpu": base, "gpu": merged(base, compose_file("compose.gpu.yaml"))}


def node_services(model: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the image this repository builds (by its name)."""
    return {
        name: service
        for name, service in model["services"].items()
        if service.get("image", "").partition(":")[0] == IMAGE
    }


def mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each short-syntax volume of a service."""
    return [tuple(v.split(":")[:2]) for v in service.get("volumes", [])]


@pytest.mark.parametrize("name", ["compose.yaml", "compose.gpu.yaml"])
def test_compose_files_validate_against_the_compose_specification(name: str) -> None:
    """Each Compose file, interpolated, is valid under the Compose Specification's JSON schema
    (check-jsonschema's vendored compose-spec.json, draft 2020-12)."""
    vendored = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendored / "compose-spec.json").read_text())
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft202012Validator(schema).iter_errors(compose_file(name))
    ]
    assert not errors, errors


def test_every_compose_variable_is_in_env_example() -> None:
    """env.example documents every variable the Compose files use, and nothing else."""
    used: set[str] = set()
    compose_file("compose.yaml", used)
    compose_file("compose.gpu.yaml", used)
    assert used == set(env_file(COMPOSE / "env.example"))


@pytest.mark.parametrize("variant", ["cpu", "gpu"])
def test_compose_node_services_match_the_image_and_the_settings(variant: str) -> None:
    """One receiver (`serve`, DICOM_NODE_WORKERS=0), workers (`work`); each container's
    environment (image ENV, then Compose's) loads; published ports are the settings' and the
    image's; the spool is on one volume shared by all, at the image's VOLUME; the image is the
    one built from this Dockerfile with the variant's TORCH_VARIANT."""
    services = node_services(compose_models()[variant])
    commands = {name: service["command"][0] for name, service in services.items()}
    assert sorted(commands.values()).count("serve") == 1, commands
    assert set(commands.values()) == {"serve", "work"}
    spool_volumes = set()
    for name, service in services.items():
        settings = check_environment(
            {**image_environment(), **service["environment"]}, f"compose service {name}"
        )
        if commands[name] == "serve":
            assert settings.workers == 0 and "replicas" not in service.get("deploy", {})
        _check_compose_ports(service, settings)
        volume = next(s for s, t in mounts(service) if str(settings.spool_dir).startswith(t))
        assert any(t in image_volumes() for s, t in mounts(service) if s == volume)
        spool_volumes.add(volume)
        _check_compose_image(service, settings)
        assert service.get("read_only") is not True or "/tmp" in service.get("tmpfs", [])
    assert len(spool_volumes) == 1


def _check_compose_ports(service: Mapping[str, Any], settings: Settings) -> None:
    for mapping in service.get("ports", []):
        container = int(str(mapping).rsplit(":", 1)[1])
        assert container in image_ports() and container in {settings.port, settings.http_port}


def _check_compose_image(service: Mapping[str, Any], settings: Settings) -> None:
    name, _, tag = service["image"].partition(":")
    variant = service["build"]["args"]["TORCH_VARIANT"]
    assert name == IMAGE and variant in VARIANTS and tag.startswith(variant)
    assert (COMPOSE / service["build"]["context"]).resolve() == ROOT
    assert service["build"]["dockerfile"] == "Dockerfile"
    assert (settings.device == "cuda") == (variant == "cuda") or settings.device == "auto"
    if variant == "cuda":
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices)


def test_compose_bind_mounts_exist() -> None:
    """Every file or folder a Compose service mounts from the repository exists."""
    for model in compose_models().values():
        for name, service in model["services"].items():
            for source, _ in mounts(service):
                if source.startswith("."):
                    assert (COMPOSE / source).exists(), f"{name} mounts a missing {source}"


def test_compose_prometheus_scrapes_every_node_process_with_the_shipped_rules() -> None:
    """Job dicom-node (the alert rules' job) discovers every node service on its HTTP port;
    its rule file is deploy/prometheus/alerts.yml; Grafana gets the dashboard and a data source
    pointing at this Prometheus."""
    model = compose_models()["cpu"]
    services = model["services"]
    volumes = dict((t, s) for s, t in mounts(services["prometheus"]))
    config = yaml.safe_load((COMPOSE / volumes["/etc/prometheus/prometheus.yml"]).read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "dicom-node")
    names = {n for sd in job["dns_sd_configs"] for n in sd["names"]}
    assert names == set(node_services(model))
    for name, service in node_services(model).items():
        settings = load_settings(environ={**image_environment(), **service["environment"]})
        assert all(sd["port"] == settings.http_port for sd in job["dns_sd_configs"]), name
    for rules in config["rule_files"]:
        assert (COMPOSE / volumes[f"/etc/prometheus/{rules}"]).resolve() == (
            ROOT / "deploy" / "prometheus" / "alerts.yml"
        )
    grafana = dict((t, s) for s, t in mounts(services["grafana"]))
    assert (COMPOSE / grafana["/etc/grafana/dashboards/dicom-node.json"]).resolve() == (
        ROOT / "deploy" / "grafana" / "dicom-node.json"
    )
    provisioning = COMPOSE / grafana["/etc/grafana/provisioning"]
    provider = yaml.safe_load((provisioning / "dashboards" / "dicom-node.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian `prometheus`)")
def test_compose_prometheus_configuration_passes_promtool(tmp_path: Path) -> None:
    """`promtool check config` on the Compose Prometheus configuration, with the alert rules
    beside it as the container mounts them."""
    shutil.copy(COMPOSE / "prometheus" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(ROOT / "deploy" / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    done = subprocess.run(
        [str(PROMTOOL), "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_orthanc_forwards_to_the_receiver_and_takes_the_results() -> None:
    """Orthanc's configuration is the reference orthanc/orthanc.json with the node's Compose host
    name, remote access behind a login, and forward-chest.lua loaded; the node sends its results
    to Orthanc's AE title and port and accepts Orthanc's calls."""
    model = compose_models()["cpu"]
    orthanc = model["services"]["orthanc"]
    volumes = dict((t, s) for s, t in mounts(orthanc))
    config = json.loads((COMPOSE / volumes["/etc/orthanc/orthanc.json"]).read_text())
    reference = json.loads((ROOT / "orthanc" / "orthanc.json").read_text())
    assert set(config) == set(reference) | {"RegisteredUsers"}
    for script in config["LuaScripts"]:
        assert (COMPOSE / volumes[script]).resolve() == ROOT / "orthanc" / "forward-chest.lua"
    receiver = next(n for n, s in node_services(model).items() if s["command"] == ["serve"])
    node = load_settings(
        environ={**image_environment(), **model["services"][receiver]["environment"]}
    )
    peer = config["DicomModalities"]["DICOMNODE"]
    assert (peer["Host"], int(peer["Port"]), peer["AET"]) == (receiver, node.port, node.ae_title)
    assert config["AuthenticationEnabled"] is True
    destination = node.destinations[0]
    assert (destination.host, destination.port) == ("orthanc", config["DicomPort"])
    assert destination.ae_title == config["DicomAet"] in node.allowed_calling_aets


# ---- Kubernetes -------------------------------------------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "patches"}
# Strategic merge: the lists merged item by item, by this key (the others are replaced).
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
}
CLUSTER_SCOPED = {"Namespace"}


def render(folder: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize folder` for the subset the manifests use: resources (files, folders),
    strategic-merge patches by kind and name, then namespace, then images (kustomize's order)."""
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - KUSTOMIZATION_KEYS
    assert not unsupported, f"{folder}: the test's renderer does not know {unsupported}"
    documents: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = folder / entry
        if path.is_dir():
            documents += render(path)
        else:
            documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, "only patches from files, matched by kind and name"
        change = yaml.safe_load((folder / patch["path"]).read_text())
        target = find(documents, change["kind"], change["metadata"]["name"])
        target.update(strategic_merge(target, change))
    for document in documents:
        if "namespace" in kustomization and document["kind"] not in CLUSTER_SCOPED:
            document["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for container in containers(documents):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                tag = image.get("newTag", tag)
                container["image"] = image.get("newName", name) + (f":{tag}" if tag else "")
    return documents


def strategic_merge(target: Any, change: Any, key: str = "") -> Any:
    """The patch `change` over `target` (mappings recursively, keyed lists item by item)."""
    if isinstance(target, dict) and isinstance(change, dict):
        result = dict(target)
        for name, value in change.items():
            result[name] = strategic_merge(target[name], value, name) if name in target else value
        return result
    if isinstance(target, list) and isinstance(change, list) and key in MERGE_KEYS:
        field = MERGE_KEYS[key]
        patched = {item[field]: item for item in change}
        result = [
            strategic_merge(i, patched.pop(i[field]), "") if i[field] in patched else i
            for i in target
        ]
        return list(patched.values()) + result
    return change


def find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one manifest of that kind and name."""
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_specs(documents: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) of every Deployment and CronJob."""
    for document in documents:
        if document["kind"] == "Deployment":
            yield document, document["spec"]["template"]
        elif document["kind"] == "CronJob":
            yield document, document["spec"]["jobTemplate"]["spec"]["template"]


def containers(documents: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every container of every pod template."""
    for _, template in pod_specs(documents):
        yield from template["spec"]["containers"]


def database_secret() -> dict[str, Any]:
    """The Secret the administrator creates (its example, outside the kustomization)."""
    return yaml.safe_load((K8S / "base" / "database-secret.example.yaml").read_text())


def container_environment(documents: list[dict[str, Any]], container: dict[str, Any]) -> dict:
    """What the process sees: the image's ENV, then envFrom (ConfigMap, Secret), then env."""
    environment = dict(image_environment())
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            environment.update(find(documents, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            secret = database_secret()
            assert secret["metadata"]["name"] == source["secretRef"]["name"]
            environment.update(secret["stringData"])
    environment.update({e["name"]: e["value"] for e in container.get("env", [])})
    return environment


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_overlays_validate_against_the_kubernetes_schemas(
    overlay: str, version: str
) -> None:
    """Every manifest of each overlay (and the Secret's example) is valid for the Kubernetes
    version, in kubernetes-validate's strict mode (no unknown fields)."""
    documents = [*render(K8S / "overlays" / overlay), database_secret()]
    for document in documents:
        where = f"{overlay}: {document['kind']}/{document['metadata']['name']}"
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {exc.message}")


KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_renderer_here_builds_what_kubectl_kustomize_builds(overlay: str) -> None:
    """The renderer the other tests use gives the same manifests as `kubectl kustomize`."""
    done = subprocess.run(
        [str(KUBECTL), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    theirs = {_identity(d): _canonical(d) for d in yaml.safe_load_all(done.stdout) if d}
    ours = {_identity(d): _canonical(d) for d in render(K8S / "overlays" / overlay)}
    assert ours == theirs


def _identity(document: dict[str, Any]) -> tuple[str, str]:
    return document["kind"], document["metadata"]["name"]


def _canonical(value: Any) -> Any:
    """Lists of named items in name order (kustomize and the renderer order merged items
    differently; the API server does not care)."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_canonical(v) for v in value]
        if items and all(isinstance(i, dict) and "name" in i for i in items):
            return sorted(items, key=lambda i: str(i["name"]))
        return items
    return value


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_pods_match_the_image_and_the_settings(overlay: str) -> None:
    """In every pod: the environment loads; the image is this Dockerfile's, tagged by variant,
    the CUDA one only for GPU workers, which alone request nvidia.com/gpu; container ports are the
    image's and the settings'; probes ask /healthz (startup, liveness) and /readyz (readiness) on
    the HTTP port; the user is the image's; the spool is the ReadWriteMany claim, mounted where
    spool_dir points; /tmp is writable under a read-only root file system."""
    documents = render(K8S / "overlays" / overlay)
    for workload, template in pod_specs(documents):
        spec = template["spec"]
        assert spec["securityContext"]["runAsUser"] == image_user()[0]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"]:
            where = f"{overlay}: {workload['metadata']['name']}"
            settings = check_environment(container_environment(documents, container), where)
            _check_pod_image(overlay, workload, container, settings)
            _check_pod_ports_and_probes(container, settings)
            _check_pod_volumes(documents, spec, container, settings)
        assert workload["metadata"]["namespace"] == "dicom-node"


def _check_pod_image(overlay: str, workload: dict, container: dict, settings: Settings) -> None:
    repository, _, tag = container["image"].rpartition(":")
    assert repository.rsplit("/", 1)[-1] == IMAGE
    gpus = container.get("resources", {}).get("limits", {}).get(GPU, 0)
    is_gpu_worker = overlay == "gpu" and workload["metadata"]["name"] == "dicom-node-worker"
    assert tag.endswith("-cuda" if is_gpu_worker else "-cpu"), container["image"]
    assert (gpus >= 1) == is_gpu_worker
    if container["args"] == ["work"]:
        assert settings.device == ("cuda" if is_gpu_worker else "cpu")


def _check_pod_ports_and_probes(container: dict, settings: Settings) -> None:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert set(ports.values()) <= image_ports()
    assert ports.get("dicom", settings.port) == settings.port
    if container["args"][0] not in {"serve", "work"}:
        return
    assert ports["http"] == settings.http_port
    if container["args"] == ["serve"]:
        assert ports["dicom"] == settings.port and settings.workers == 0
    probes = {name: container[f"{name}Probe"]["httpGet"] for name in ("startup", "liveness")}
    probes["readiness"] = container["readinessProbe"]["httpGet"]
    for name, probe in probes.items():
        assert probe["path"] == ("/readyz" if name == "readiness" else "/healthz")
        assert ports.get(probe["port"], probe["port"]) == settings.http_port


def _check_pod_volumes(documents: list, spec: dict, container: dict, settings: Settings) -> None:
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounted = {m["mountPath"]: volumes[m["name"]] for m in container.get("volumeMounts", [])}
    if container["securityContext"].get("readOnlyRootFilesystem"):
        assert "emptyDir" in mounted["/tmp"]
    if container["args"][0] in {"serve", "work"}:
        spool = next(v for path, v in mounted.items() if str(settings.spool_dir).startswith(path))
        claim = find(
            documents, "PersistentVolumeClaim", spool["persistentVolumeClaim"]["claimName"]
        )
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_workloads_receiver_alone_workers_many(overlay: str) -> None:
    """One receiver pod (`serve`) by default, replaced by Recreate (never two versions at once
    on the migrated schema);
    the DICOM Service selects it on the settings' port; workers run `work`, their
    PodDisruptionBudget selects them."""
    documents = render(K8S / "overlays" / overlay)
    receiver = find(documents, "Deployment", "dicom-node-receiver")
    assert receiver["spec"]["replicas"] == 1 and receiver["spec"]["strategy"]["type"] == "Recreate"
    labels = receiver["spec"]["template"]["metadata"]["labels"]
    service = find(documents, "Service", "dicom-node-dicom")
    assert service["spec"]["selector"].items() <= labels.items()
    settings = load_settings(environ=_pod_environment(documents, receiver))
    assert [p["port"] for p in service["spec"]["ports"]] == [settings.port]
    worker = find(documents, "Deployment", "dicom-node-worker")
    assert worker["spec"]["template"]["spec"]["containers"][0]["args"] == ["work"]
    budget = find(documents, "PodDisruptionBudget", "dicom-node-worker")
    selector = budget["spec"]["selector"]["matchLabels"]
    assert selector.items() <= worker["spec"]["template"]["metadata"]["labels"].items()


def _pod_environment(documents: list[dict[str, Any]], workload: dict[str, Any]) -> dict:
    container = workload["spec"]["template"]["spec"]["containers"][0]
    environment = container_environment(documents, container)
    return {k: v for k, v in environment.items() if k.startswith(ENV_PREFIX)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_network_policy_admits_dicom_only_from_the_configured_peers(overlay: str) -> None:
    """The receiver's DICOM port is open to exactly the networks of the peers the node is
    configured with (DICOM_NODE_PEERS), the HTTP port to the monitoring namespace only; the
    workers take no DICOM at all."""
    documents = render(K8S / "overlays" / overlay)
    receiver = find(documents, "Deployment", "dicom-node-receiver")
    settings = load_settings(environ=_pod_environment(documents, receiver))
    peers = {ipaddress.ip_network(a) for peer in settings.peers for a in peer.addresses}
    assert peers, "no peers configured: the policy would admit nobody"
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    for policy in policies:
        selected = _selects(policy, receiver)
        for rule in policy["spec"]["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            assert rule.get("from") and ports, "a rule open to every source or every port"
            if settings.port in ports:
                assert selected and ports == {settings.port}
                sources = {ipaddress.ip_network(s["ipBlock"]["cidr"]) for s in rule["from"]}
                assert sources == peers
            else:
                assert ports == {settings.http_port}
                assert all("namespaceSelector" in s for s in rule["from"])
    assert any(_selects(p, receiver) for p in policies)
    assert any(_selects(p, find(documents, "Deployment", "dicom-node-worker")) for p in policies)


def _selects(policy: dict[str, Any], workload: dict[str, Any]) -> bool:
    wanted = policy["spec"]["podSelector"]["matchLabels"].items()
    return wanted <= workload["spec"]["template"]["metadata"]["labels"].items()


# ---- systemd ----------------------------------------------------------------------------------


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections, each a list of (key, value) in order (keys may repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = line.strip("[]")
            sections[current] = []
            continue
        key, _, value = line.partition("=")
        sections[current].append((key.strip(), value.strip()))
    return sections


def unit_environment(service: dict[str, list[tuple[str, str]]], instance: str) -> dict[str, str]:
    """The environment a unit gives its process: the EnvironmentFile (its example), then
    Environment= assignments, with %i as `instance`."""
    environment: dict[str, str] = {}
    for key, value in service["Service"]:
        if key == "EnvironmentFile":
            assert value == "/etc/dicom-node/dicom-node.env"
            environment.update(env_file(SYSTEMD / "dicom-node.env.example"))
        elif key == "Environment":
            environment.update(a.split("=", 1) for a in shlex.split(value.replace("%i", instance)))
    return environment


SERVICES = sorted(SYSTEMD.glob("*.service"))


@pytest.mark.parametrize("path", SERVICES, ids=[p.name for p in SERVICES])
def test_systemd_units_are_hardened_and_run_the_node_with_valid_settings(path: Path) -> None:
    """Every service runs as the dedicated user with the hardening options; its environment
    loads; the receiver runs `serve` with DICOM_NODE_WORKERS=0, the worker template `work` with
    its instance name as its own HTTP port."""
    sections = unit(path)
    options = dict(sections["Service"])
    for key, value in HARDENING.items():
        assert options.get(key) == value, f"{path.name}: {key}={options.get(key)}"
    command = shlex.split(options["ExecStart"])
    assert command[0] == "/opt/dicom-node/venv/bin/dicom-node"
    assert command[-2:] == ["--config", "/etc/dicom-node/dicom-node.toml"]
    settings = check_environment(unit_environment(sections, "8081"), path.name)
    if command[1] == "serve":
        assert settings.workers == 0 and settings.http_port == 8080
    elif command[1] == "work":
        assert path.name.endswith("@.service") and settings.http_port == 8081
    else:
        assert command[1:3] == ["audit", "purge"] and options["Type"] == "oneshot"
    for key, value in sections.get("Install", []):
        assert key == "WantedBy" and (value.endswith(".target"))
        assert value in {"multi-user.target", "timers.target"} or (SYSTEMD / value).exists()


def test_every_systemd_timer_has_its_service() -> None:
    """A timer starts the service of its own name."""
    for timer in SYSTEMD.glob("*.timer"):
        assert timer.with_suffix(".service").exists()
        assert dict(unit(timer)["Timer"]).get("OnCalendar")


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds no error and no warning in the units (the worker template
    as instance @8081, the node's path replaced by this checkout's, which exists here)."""
    dicom_node = Path(sys.executable).with_name("dicom-node")
    for path in SYSTEMD.glob("dicom-node*"):
        if path.suffix in {".service", ".timer", ".target"}:
            name = path.name.replace("@.service", "@8081.service")
            text = path.read_text().replace("/opt/dicom-node/venv/bin/dicom-node", str(dicom_node))
            (tmp_path / name).write_text(text)
    done = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", *sorted(p.name for p in tmp_path.iterdir())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr


# ---- decoders without the GPL-3.0 plugin ---------------------------------------------------

# One real monochrome image per transfer syntax the SCP accepts for CR/DX: pydicom's test files,
# or (a tuple) an uncompressed one encoded here by GDCM in the syntax.
SAMPLES: dict[str, tuple[UID, str | tuple[str]]] = {
    "explicit VR little endian": (ExplicitVRLittleEndian, "CT_small.dcm"),
    "implicit VR little endian": (ImplicitVRLittleEndian, "MR_small_implicit.dcm"),
    "deflated": (DeflatedExplicitVRLittleEndian, "image_dfl.dcm"),
    "JPEG baseline": (JPEGBaseline8Bit, ("image_dfl.dcm",)),
    "JPEG extended, 8 bits": (JPEGExtended12Bit, ("image_dfl.dcm",)),
    "JPEG extended, 12 bits": (JPEGExtended12Bit, "JPGExtended.dcm"),
    "JPEG lossless, process 14": (JPEGLossless, ("MR_small.dcm",)),
    "JPEG lossless, SV1": (JPEGLosslessSV1, "JPEG-LL.dcm"),
    "JPEG-LS lossless": (JPEGLSLossless, "MR_small_jpeg_ls_lossless.dcm"),
    "JPEG-LS near-lossless": (JPEGLSNearLossless, "JPEGLSNearLossless_16.dcm"),
    "JPEG 2000 lossless": (JPEG2000Lossless, "MR_small_jp2klossless.dcm"),
    "JPEG 2000": (JPEG2000, "JPEG2000.dcm"),
    "RLE lossless": (RLELossless, "MR_small_RLE.dcm"),
}
LOSSY = {JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSNearLossless, JPEG2000}
# What no permissive decoder reads: none. pydicom's GDCM plugin refuses 12-bit JPEG extended and
# Pillow cannot read it; the node's own plugin (dicom_node.model.gdcm12) decodes it through GDCM.
GAPS: set[str] = set()

# Run in a fresh interpreter: pylibjpeg-libjpeg is made invisible as if it were not installed
# (its module cannot be imported, its entry points are gone), then each file is decoded the way
# dicom_node.model.preprocess does (`ds.pixel_array`: every available plugin in turn).
WITHOUT_LIBJPEG = """
import importlib.metadata as metadata, json, sys
sys.modules["libjpeg"] = None
_entry_points = metadata.entry_points
def entry_points(**params):
    found = _entry_points(**params)
    keep = [e for e in found if not (e.dist and e.dist.name.lower() == "pylibjpeg-libjpeg")]
    return metadata.EntryPoints(keep)
metadata.entry_points = entry_points
import numpy as np
from pydicom import dcmread
from pydicom.pixels import get_decoder
import dicom_node.model.preprocess  # registers the node's own plugins (gdcm12)
out, paths = sys.argv[1], sys.argv[2:]
results = []
for number, path in enumerate(paths):
    ds = dcmread(path)
    plugins = list(get_decoder(ds.file_meta.TransferSyntaxUID).available_plugins)
    try:
        np.save(f"{out}/{number}.npy", ds.pixel_array)
        results.append({"plugins": plugins, "error": None})
    except Exception as exc:
        results.append({"plugins": plugins, "error": str(exc)})
print(json.dumps(results))
"""


def transcode(source: Path, target: Path, syntax: UID) -> None:
    """Encodes `source` in `syntax` with GDCM."""
    import gdcm  # type: ignore[import-untyped]

    reader = gdcm.ImageReader()
    reader.SetFileName(str(source))
    assert reader.Read()
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(syntax)))
    change.SetInput(reader.GetImage())
    assert change.Change()
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(target))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write()


@pytest.fixture(scope="module")
def without_gpl_decoder(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Each sample decoded without pylibjpeg-libjpeg: its file, and the pixels or the error."""
    folder = tmp_path_factory.mktemp("decoders")
    files = {}
    for number, (name, (syntax, source)) in enumerate(SAMPLES.items()):
        if isinstance(source, tuple):
            files[name] = folder / f"sample-{number}.dcm"
            transcode(Path(get_testdata_file(source[0])), files[name], syntax)
        else:
            files[name] = Path(get_testdata_file(source))
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_LIBJPEG, str(folder), *map(str, files.values())],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results = {}
    for number, (name, result) in enumerate(zip(files, json.loads(done.stdout), strict=True)):
        pixels = None if result["error"] else np.load(folder / f"{number}.npy")
        results[name] = {**result, "path": files[name], "pixels": pixels}
    return results


def _decodes_as_with_every_plugin(name: str, result: Mapping[str, Any]) -> None:
    syntax = SAMPLES[name][0]
    ds = dcmread(result["path"])
    assert ds.file_meta.TransferSyntaxUID == syntax and ds.SamplesPerPixel == 1
    assert result["error"] is None, f"{name}: {result['error']}"
    reference = ds.pixel_array.astype(np.int64)  # every plugin, libjpeg included
    without = result["pixels"].astype(np.int64)
    assert without.shape == reference.shape, name
    assert np.abs(without - reference).max() <= (2 if syntax in LOSSY else 0), name


def test_every_accepted_transfer_syntax_decodes_without_the_gpl_decoder(
    without_gpl_decoder: dict[str, Any],
) -> None:
    """With pylibjpeg-libjpeg (GPL-3.0, the optional extra `gpl-decoders`) hidden, an image of
    each transfer syntax the SCP accepts for radiographs still decodes, through GDCM (12-bit JPEG
    extended by the node's own plugin, dicom_node.model.gdcm12), CharLS, OpenJPEG, Pillow or
    pydicom itself, to the pixels it has with every plugin (lossless syntaxes exactly, lossy
    ones within two grey levels: decoders round differently)."""
    assert {syntax for syntax, _ in SAMPLES.values()} == set(TRANSFER_SYNTAXES)
    assert "pylibjpeg" not in without_gpl_decoder["JPEG baseline"]["plugins"], "not hidden"
    for name, result in without_gpl_decoder.items():
        if name not in GAPS:
            _decodes_as_with_every_plugin(name, result)
    lossless = without_gpl_decoder["JPEG lossless, process 14"]["pixels"]
    assert np.array_equal(lossless, dcmread(get_testdata_file("MR_small.dcm")).pixel_array)


# ---- the administrator's guide -------------------------------------------------------------


def test_the_admin_guide_names_real_commands_and_files() -> None:
    """Every `dicom-node <command>` in docs/admin.md exists, and every repository path it
    names in backquotes is there."""
    from dicom_node.cli import build_parser

    text = (ROOT / "docs" / "admin.md").read_text()
    code = re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL) + re.findall(r"`([^`\n]+)`", text)
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in re.findall(r"(?<!-n )\bdicom-node ([a-z][a-z-]+)", "\n".join(code)):
        assert command in commands, f"docs/admin.md: no command `dicom-node {command}`"
    for path in re.findall(
        r"`((?:deploy|docs|config|orthanc|bench|scripts|tests)/[^`\s*{}]*)", text
    ):
        assert (ROOT / path).exists(), f"docs/admin.md names a missing {path}"
