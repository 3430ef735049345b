"""Settings: file and environment sources, precedence, validation errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.errors import ConfigError
from dicom_node.settings import load_settings

REPO = Path(__file__).resolve().parents[1]


def test_documented_example_file_loads_with_the_defaults() -> None:
    """config/dicom-node.toml documents every key and its values equal the built-in defaults
    (its relative paths resolve against config/, the defaults' against the working folder)."""
    from_file = load_settings(REPO / "config" / "dicom-node.toml", environ={})
    defaults = load_settings(environ={})
    assert from_file == defaults.model_copy(
        update={
            "spool_dir": REPO / defaults.spool_dir,
            "model_bundle": REPO / defaults.model_bundle,
            "database_url": f"sqlite:///{REPO / defaults.database_url.removeprefix('sqlite:///')}",
        }
    )
    text = (REPO / "config" / "dicom-node.toml").read_text()
    for key, value in defaults.model_dump().items():
        documented = f"\n{key} =" in text or (value is None and f"\n# {key} =" in text)
        assert documented, f"{key} is not documented in config/dicom-node.toml"


def test_environment_wins_over_file(tmp_path: Path) -> None:
    """DICOM_NODE_<KEY> overrides the TOML file; destinations are parsed from JSON."""
    config = tmp_path / "node.toml"
    config.write_text('ae_title = "FROMFILE"\nport = 1104\n')
    settings = load_settings(
        config,
        environ={
            "DICOM_NODE_PORT": "2104",
            "DICOM_NODE_DESTINATIONS": '[{"ae_title":"PACS","host":"127.0.0.1","port":4242}]',
            "DICOM_NODE_ALLOWED_CALLING_AETS": "ORTHANC, MODALITY1",
        },
    )
    assert settings.ae_title == "FROMFILE"
    assert settings.port == 2104
    assert settings.destinations[0].ae_title == "PACS"
    assert settings.destinations[0].port == 4242
    assert settings.allowed_calling_aets == ("ORTHANC", "MODALITY1")


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"DICOM_NODE_PORT": "not-a-port"}, "port"),
        ({"DICOM_NODE_PORT": "70000"}, "port"),
        ({"DICOM_NODE_AE_TITLE": "A-TITLE-FAR-TOO-LONG"}, "ae_title"),
        ({"DICOM_NODE_DEVICE": "tpu"}, "device"),
        ({"DICOM_NODE_DESTINATIONS": '[{"ae_title":"PACS","host":"h"}]'}, "destinations.0.port"),
        (
            {"DICOM_NODE_DESTINATIONS": '[{"ae_title":"P","host":"h","port":1,"sc_findings":"x"}]'},
            "destinations.0.sc_findings",
        ),
        ({"DICOM_NODE_DESTINATIONS": "not json"}, "DICOM_NODE_DESTINATIONS"),
        ({"DICOM_NODE_ALLOWED_CALLING_AETS": '["A", '}, "DICOM_NODE_ALLOWED_CALLING_AETS"),
        ({"DICOM_NODE_DATABASE_URL": "postgres://u@h/db"}, "postgresql[+]psycopg://"),
        ({"DICOM_NODE_QUIET_SECONDS": "-1"}, "quiet_seconds"),
        ({"DICOM_NODE_NO_SUCH_KEY": "1"}, "DICOM_NODE_NO_SUCH_KEY"),
    ],
)
def test_invalid_values_are_refused_naming_the_key(environ: dict[str, str], key: str) -> None:
    """Each invalid setting raises ConfigError whose message names the offending key."""
    with pytest.raises(ConfigError, match=key):
        load_settings(environ=environ)


def test_settings_are_immutable() -> None:
    """The settings object cannot be changed after start-up."""
    settings = load_settings(environ={})
    with pytest.raises(Exception, match="frozen"):
        settings.port = 1  # type: ignore[misc]


def test_unknown_key_in_file_is_refused(tmp_path: Path) -> None:
    """A typo in the TOML file is an error naming the key, not silently ignored."""
    config = tmp_path / "node.toml"
    config.write_text("quiet_secnds = 3\n")
    with pytest.raises(ConfigError, match="quiet_secnds"):
        load_settings(config, environ={})


def test_relative_paths_in_a_file_resolve_against_its_folder(tmp_path: Path) -> None:
    """A file's relative spool, bundle and SQLite paths are under the file's folder, whatever the
    working folder; the same relative path from the environment stays relative."""
    folder = tmp_path / "etc"
    folder.mkdir()
    config = folder / "node.toml"
    config.write_text(
        'spool_dir = "spool"\nmodel_bundle = "../models/m"\ndatabase_url = "sqlite:///db/n.db"\n'
    )
    settings = load_settings(config, environ={})
    assert settings.spool_dir == folder / "spool"
    assert settings.model_bundle == tmp_path / "models" / "m"
    assert settings.database_url == f"sqlite:///{folder / 'db' / 'n.db'}"
    from_env = load_settings(config, environ={"DICOM_NODE_SPOOL_DIR": "here"})
    assert from_env.spool_dir == Path("here")


def test_error_names_the_file_a_bad_value_came_from(tmp_path: Path) -> None:
    """A bad value in the file names the key and the file; from the environment, the variable."""
    config = tmp_path / "node.toml"
    config.write_text("port = 99999\n")
    with pytest.raises(ConfigError, match=rf"'port' \(from file {config}\)"):
        load_settings(config, environ={})
    with pytest.raises(ConfigError, match=r"'port' \(from DICOM_NODE_PORT\)"):
        load_settings(config, environ={"DICOM_NODE_PORT": "-5"})
