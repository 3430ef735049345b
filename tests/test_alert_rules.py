"""The monitoring that ships with the node (deploy/prometheus, deploy/grafana, docs/operations.md):
the alert rules are valid and their promtool unit tests pass, the example Prometheus
configuration is valid, and the rules and the Grafana dashboard only use metrics the node
exports. The promtool tests are skipped where promtool (Debian package `prometheus`, installed by
scripts/setup.sh) is missing; the others need nothing but the repository."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import dicom_node.metrics  # noqa: F401  (registers the node's metrics in REGISTRY)

ROOT = Path(__file__).resolve().parents[1]
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
ALERTS_TEST = PROMETHEUS / "alerts_test.yml"
CONFIG = PROMETHEUS / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dicom-node.json"
OPERATIONS = ROOT / "docs" / "operations.md"

PROMTOOL = shutil.which("promtool") or (
    "/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not installed (Debian package `prometheus`, see scripts/setup.sh)",
)

METRIC_NAME = re.compile(r"dicom_node_[a-z_]+")
# The series each metric type gives in the exposition, by the suffix on its family's name.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
}
# Grafana's variables in the dashboard's expressions, replaced by what they stand for.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "6h",
    "$instance": ".*",
}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """Runs promtool in the repository root."""
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def exported_names() -> set[str]:
    """Every series name the node's registry can expose, plus Prometheus's own `up`."""
    names = {"up"}
    for family in REGISTRY.collect():
        for suffix in SUFFIXES.get(family.type, ("",)):
            names.add(family.name + suffix)
        names.update(sample.name for sample in family.samples)
    return names


def alert_rules() -> list[dict[str, Any]]:
    """The rules of alerts.yml, all groups together."""
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard, parsed."""
    parsed: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return parsed


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    found: list[dict[str, Any]] = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_exprs() -> list[str]:
    """The PromQL expression of every target of every panel."""
    return [
        target["expr"]
        for panel in panels(dashboard())
        for target in panel.get("targets", [])
        if "expr" in target
    ]


@needs_promtool
def test_alert_rules_are_valid() -> None:
    """`promtool check rules` accepts alerts.yml (syntax, PromQL, templates)."""
    done = promtool("check", "rules", ALERTS)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_alert_rules_unit_tests_pass() -> None:
    """`promtool test rules alerts_test.yml` passes: every alert fires on its input series with
    the expected labels and annotations, and stays silent in the cases where it must not."""
    done = promtool("test", "rules", ALERTS_TEST)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_example_prometheus_config_is_valid() -> None:
    """`promtool check config` accepts deploy/prometheus/prometheus.yml and the rule files it
    names."""
    done = promtool("check", "config", CONFIG)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    """Each alert of alerts.yml has, in alerts_test.yml, a case where it fires and one where it
    does not; each rule has `for`, a severity (critical or warning), a summary and a
    description."""
    tests = yaml.safe_load(ALERTS_TEST.read_text())["tests"]
    checks = [check for case in tests for check in case.get("alert_rule_test", [])]
    for rule in alert_rules():
        name = rule["alert"]
        assert "for" in rule, name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        mine = [check for check in checks if check["alertname"] == name]
        assert any(check["exp_alerts"] for check in mine), f"{name} never fires in a test"
        assert any(not check["exp_alerts"] for check in mine), f"{name}: no case where it is silent"


def test_alert_rules_use_only_exported_metrics() -> None:
    """Every dicom_node_* name in the rules' expressions and annotations is a series the node's
    registry exposes (a renamed metric would silence its alert for good)."""
    exported = exported_names()
    used: set[str] = set()
    for rule in alert_rules():
        text = " ".join([rule["expr"], *rule["annotations"].values()])
        used.update(METRIC_NAME.findall(text))
    assert used, "no dicom_node_ metric found in alerts.yml"
    assert used <= exported, sorted(used - exported)


def test_dashboard_uses_only_exported_metrics() -> None:
    """Every dicom_node_* name in the dashboard's panel expressions is a series the node's
    registry exposes."""
    exported = exported_names()
    used = {name for expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}
    assert used, "no dicom_node_ metric found in the dashboard"
    assert used <= exported, sorted(used - exported)


def test_dashboard_is_well_formed() -> None:
    """The dashboard parses, has its uid and schema version, a Prometheus datasource variable,
    a unique id per panel, and every panel has a datasource and at least one target."""
    board = dashboard()
    assert board["uid"] == "dicom-node"
    assert board["schemaVersion"] == 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in panels(board)]
    assert len(ids) == len(set(ids)), ids
    for panel in panels(board):
        assert panel.get("datasource"), panel["title"]
        assert panel.get("targets"), panel["title"]
        for target in panel["targets"]:
            assert target.get("expr"), (panel["title"], target)


@needs_promtool
def test_dashboard_expressions_are_valid_promql(tmp_path: Path) -> None:
    """Every panel expression, Grafana's variables replaced, parses as PromQL (promtool checks
    them as recording rules)."""
    exprs = []
    for expr in dashboard_exprs():
        plain = expr
        for variable, value in GRAFANA_VARIABLES.items():
            plain = plain.replace(variable, value)
        assert "$" not in plain, expr
        exprs.append(plain)
    rules = [{"record": f"dashboard:expr_{n}", "expr": expr} for n, expr in enumerate(exprs)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_operations_page_describes_every_metric() -> None:
    """docs/operations.md names every metric of dicom_node/metrics.py (as metrics.py promises)
    and every alert of alerts.yml."""
    text = OPERATIONS.read_text()
    families = {f.name for f in REGISTRY.collect() if f.name.startswith("dicom_node_")}
    assert families
    missing = sorted(name for name in families if name not in text)
    assert not missing, f"not in docs/operations.md: {missing}"
    undocumented = sorted(rule["alert"] for rule in alert_rules() if rule["alert"] not in text)
    assert not undocumented, f"not in docs/operations.md: {undocumented}"
