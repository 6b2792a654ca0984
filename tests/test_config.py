"""Configuration loading and validation: the shipped file, defaults, and clear errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dicom_node.config import Config, ConfigError, ExportConfig, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def _base(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "node": {"ae_title": "RTFSYN", "port": 11112},
        "destinations": {"PACS": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}},
        "routes": [{"match": {"Modality": "MR"}, "targets": ["T2"], "destination": "PACS"}],
    }
    data.update(overrides)
    return data


def test_shipped_config_loads_with_the_issue_keys() -> None:
    config = load_config(REPO / "config" / "node.toml")
    assert config.node.ae_title == "RTFSYN"
    assert config.node.port == 11112
    assert config.node.stable_seconds == 5
    assert config.node.allowed_calling_aets == ()
    assert config.node.disk_watermark_percent == 75
    assert config.model.checkpoint == "default" and config.model.device == "auto"
    assert config.model.bias_correction is False
    assert config.destinations["PACS"].port == 4242
    route = config.routes[0]
    assert route.targets == ("T2", "FLAIR") and route.destination == "PACS"
    assert route.match[0][0] == "Modality" and route.match[0][1].pattern == "MR"
    assert config.export.max_attempts is None and config.export.retry_window_hours == 24
    assert config.node.data_dir == REPO / "var"  # "../var", against the file's folder


def test_defaults_resolve_data_dir_against_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = Config.default()
    assert config.node.data_dir == tmp_path / "var"
    assert config.database_path == tmp_path / "var" / "joblog.sqlite"
    assert parse_config({"node": {"data_dir": "spooly"}}).node.data_dir == tmp_path / "spooly"
    assert config.routes == () and config.model.device == "auto"


def test_backoff_doubles_and_is_capped() -> None:
    export = ExportConfig(max_attempts=9, backoff_seconds=2, backoff_max_seconds=10)
    assert [export.backoff(n) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]


@pytest.mark.parametrize("change, message", [
    ({"node": {"port": 70000}}, "node.port must be an integer port in 1..65535. Found 70000"),
    ({"node": {"port": "104"}}, "node.port must be an integer port"),
    ({"node": {"ae_title": "A_VERY_LONG_AE_TITLE"}}, "node.ae_title must be at most 16"),
    ({"node": {"ae_title": "BAD\\AE"}}, "without backslash"),
    ({"node": {"stable_seconds": 0}}, "node.stable_seconds must be a number in (0.0"),
    ({"node": {"disk_watermark_percent": 120}}, "node.disk_watermark_percent"),
    ({"node": {"workers": 0}}, "node.workers must be an integer in [1, 64]. Found 0"),
    ({"node": {"allowed_calling_aets": "SCU"}}, "node.allowed_calling_aets must be a list"),
    ({"node": {"prot": 1}}, "node has unknown key(s) prot"),
    ({"node": {"tls": {"certificate": "/nonexistent.crt", "private_key": "/nonexistent.key"}}},
     "node.tls.certificate must name an existing file"),
    ({"model": {"device": "gpu"}}, "model.device must be auto, cpu, cuda or cuda:N. Found 'gpu'"),
    ({"model": {"bias_correction": "yes"}}, "model.bias_correction must be true or false. Found 'yes'"),
    ({"model": {"unvalidated_targets": "ignore"}}, "model.unvalidated_targets must be 'refuse' or 'allow'"),
    ({"export": {"backoff_seconds": 10, "backoff_max_seconds": 5}},
     "export.backoff_max_seconds must be >= export.backoff_seconds"),
    ({"destinations": {"PACS": {"ae_title": "PACS", "host": "h"}}},
     "destinations.PACS.port is required"),
    ({"destinations": {"PACS": {"ae_title": "PACS", "host": "h", "port": 1, "tls": True}}},
     "destinations.PACS.tls = true needs [node.tls]"),
    ({"callers": {"WS1": {}}}, "callers.WS1.port is required"),
])
def test_invalid_values_name_the_key_and_the_value(change: dict, message: str) -> None:
    data = _base()
    for key, value in change.items():
        data[key] = {**data.get(key, {}), **value} if key == "node" else value
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert message in str(info.value)


@pytest.mark.parametrize("route, message", [
    ({"destination": "NOWHERE"}, "routes[0].destination must be a [destinations] key or "
                                 "'caller' (known: PACS, caller). Found 'NOWHERE'"),
    ({"targets": ["T3"]}, "routes[0].targets: unknown target preset 'T3'"),
    ({"targets": []}, "routes[0].targets must be a non-empty list"),
    ({"targets": ["T2", "t2"]}, "lists a preset twice"),
    ({"match": {"Modality": "MR("}}, "routes[0].match.Modality is not a valid regular expression"),
    ({"match": {"Modalty": "MR"}}, "'Modalty' is not a DICOM attribute keyword"),
    ({"match": {"ReferencedImageSequence": "x"}}, "is a sequence"),
    ({"exclude": {"SeriesDescription": 3}}, "routes[0].exclude.SeriesDescription must be a "
                                            "regular expression string. Found 3"),
    ({"output_format": "nifti"}, "routes[0].output_format must be one of mr, enhanced-mr, "
                                 "parametric-map. Found 'nifti'"),
    ({"series_number_offset": -1}, "routes[0].series_number_offset"),
    ({"colour": "red"}, "routes[0] has unknown key(s) colour"),
])
def test_invalid_routes_are_refused(route: dict, message: str) -> None:
    data = _base()
    data["routes"] = [{**data["routes"][0], **route}]
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert message in str(info.value)


def test_route_options_are_parsed() -> None:
    data = _base(callers={"WS1": {"port": 11113}})
    data["routes"] = [{"name": "back", "match": {"SeriesDescription": "(?i)t1"},
                       "exclude": {"ImageType": "LOCALIZER"}, "targets": ["flair", "PD"],
                       "destination": "caller", "output_format": "enhanced-mr",
                       "series_number_offset": 500}]
    route = parse_config(data).routes[0]
    assert route.name == "back" and route.targets == ("FLAIR", "PD")
    assert route.destination == "caller" and route.output_format == "enhanced-mr"
    assert route.series_number_offset == 500
    assert route.exclude[0][0] == "ImageType"
    assert parse_config(data).callers["WS1"].port == 11113


def test_duplicate_route_names_are_refused() -> None:
    data = _base()
    data["routes"] = [dict(data["routes"][0], name="a"), dict(data["routes"][0], name="a")]
    with pytest.raises(ConfigError, match="route names must be unique"):
        parse_config(data)


def test_load_config_reports_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nport = 1\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_tls_section_requires_ca_for_client_certificates(tmp_path: Path) -> None:
    cert, key = tmp_path / "n.crt", tmp_path / "n.key"
    cert.write_text("x")
    key.write_text("x")
    tls = {"certificate": str(cert), "private_key": str(key), "require_client_certificate": True}
    with pytest.raises(ConfigError, match="needs node.tls.ca_certificates"):
        parse_config({"node": {"tls": tls}})
    del tls["require_client_certificate"]
    parsed = parse_config({"node": {"tls": tls}}).node.tls
    assert parsed is not None and parsed.certificate == cert and parsed.ca_certificates is None


def test_model_checkpoint_must_exist_unless_default(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.checkpoint must be 'default' or an existing "
                                          "checkpoint file. Found 'missing.pt'"):
        parse_config({"model": {"checkpoint": "missing.pt"}})
    weights = tmp_path / "tiny.pt"
    weights.write_bytes(b"weights")
    assert parse_config({"model": {"checkpoint": str(weights)}}).model.checkpoint == str(weights)


def test_database_and_roles_default_to_one_process_on_sqlite(tmp_path: Path) -> None:
    config = parse_config(_base(node={"data_dir": str(tmp_path / "var")}))
    assert config.node.roles == ("receive", "process") and config.node.lease_seconds == 30
    assert config.database.url is None and not config.shared_database
    assert config.database_url == f"sqlite:///{tmp_path / 'var' / 'joblog.sqlite'}"
    shared = parse_config(_base(node={"roles": ["process"]},
                                database={"url": "postgresql+psycopg://u:secret@db:5432/log"}))
    assert shared.node.roles == ("process",) and shared.shared_database
    assert shared.database_url == "postgresql+psycopg://u:secret@db:5432/log"


@pytest.mark.parametrize("change, message", [
    ({"node": {"roles": []}}, "node.roles must be a non-empty list of distinct roles out of "
                              "'receive', 'process'. Found []"),
    ({"node": {"roles": ["receive", "send"]}}, "Found ['receive', 'send']"),
    ({"node": {"roles": ["process", "process"]}}, "distinct roles"),
    ({"node": {"roles": ["process"]}}, "which share a job log only on a database server: set "
                                       "[database] url"),
    ({"node": {"lease_seconds": 1}}, "node.lease_seconds must be a number in [3.0"),
    ({"database": {"url": "mysql://u:secret@db/log"}}, "database.url must start with one of "
                                                        "sqlite://, postgresql+psycopg://. "
                                                        "Found scheme 'mysql'"),
    ({"database": {"url": "postgresql://u@db/log"}}, "Found scheme 'postgresql'"),
    ({"database": {"path": "x"}}, "database"),
])
def test_invalid_scale_out_settings_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_base(**change))
    assert message in str(info.value) and "secret" not in str(info.value)


def test_model_bias_correction_is_off_unless_asked_for() -> None:
    assert parse_config(_base()).model.bias_correction is False
    assert parse_config(_base(model={"bias_correction": True})).model.bias_correction is True


def test_targets_failing_their_lesion_check_are_refused_unless_allowed() -> None:
    assert parse_config(_base()).model.unvalidated_targets == "refuse"
    assert parse_config(_base(model={"unvalidated_targets": "allow"})).model.unvalidated_targets == "allow"
def test_relative_paths_resolve_against_the_config_file(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`rtfsyn status` run from another folder finds the same job log as `serve`."""
    folder = tmp_path / "etc"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"not read here")
    path = folder / "node.toml"
    path.write_text('[node]\ndata_dir = "data"\n[model]\ncheckpoint = "model.pt"\n')
    monkeypatch.chdir(tmp_path)
    config = load_config("etc/node.toml")
    assert config.node.data_dir == folder / "data"
    assert config.model.checkpoint == str(folder / "model.pt")


def test_earlier_export_keys_are_still_accepted() -> None:
    """max_attempts (earlier versions) still limits attempts; the window is the default."""
    export = parse_config({"export": {"max_attempts": 5, "backoff_seconds": 2,
                                      "backoff_max_seconds": 300}}).export
    assert export.max_attempts == 5 and export.retry_window_hours == 24
    assert export.attempts_span_seconds() == 2 + 4 + 8 + 16
    assert parse_config({"export": {"retry_window_hours": 0.5}}).export.retry_window_seconds \
        == 1800
    with pytest.raises(ConfigError, match="export.retry_window_hours"):
        parse_config({"export": {"retry_window_hours": -1}})


@pytest.mark.parametrize("host, allowed, warned", [
    ("0.0.0.0", [], True), ("10.1.2.3", [], True), ("::", [], True), ("pacs-net", [], True),
    ("127.0.0.1", [], False), ("localhost", [], False), ("::1", [], False),
    ("0.0.0.0", ["MODALITY1"], False)])
def test_open_node_warns_at_start_up(host: str, allowed: list[str], warned: bool) -> None:
    from dicom_node.config import startup_warnings

    config = parse_config({"node": {"host": host, "allowed_calling_aets": allowed}})
    found = [w for w in startup_warnings(config) if "allowed_calling_aets" in w]
    assert bool(found) is warned
    if warned:
        assert f"any calling AE title is accepted on {host}:11112" in found[0]


def test_short_max_attempts_warns_at_start_up() -> None:
    from dicom_node.config import startup_warnings

    [warning] = startup_warnings(parse_config({"node": {"host": "127.0.0.1"},
                                               "export": {"max_attempts": 5}}))
    assert "max_attempts = 5 ends the retries of a delivery after about 30 s" in warning
