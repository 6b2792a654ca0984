"""The files under deploy/ are valid for the tools that read them.

Docker is not available on the CI machines, so the images are not built; what
can be checked here is checked: the node loads ``deploy/node.toml``, Orthanc
1.10 starts with ``deploy/orthanc/orthanc.json`` (paths and ports swapped for
test ones) and answers on its REST API, the compose file is YAML with both
services, ``systemd-analyze verify`` accepts the unit.
"""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.harness import (AUTOROUTE_LUA, ORTHANC_BIN, REPO_ROOT, ManagedProcess,
                                   autoroute_script, free_port, require, wait_until)

DEPLOY = REPO_ROOT / "deploy"


def test_deploy_node_toml_loads_with_the_node_loader() -> None:
    from dicom_node.config import load_config

    config = load_config(DEPLOY / "node.toml")
    assert config.node.ae_title == "RTFSYN"
    assert "ORTHANC" in config.node.allowed_calling_aets
    assert config.destinations["PACS"].host == "orthanc"
    assert config.routes[0].destination == "PACS"


def test_compose_file_runs_orthanc_and_the_node() -> None:
    yaml = pytest.importorskip("yaml")
    compose = yaml.safe_load((DEPLOY / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"orthanc", "node"}
    mounts = " ".join(services["orthanc"]["volumes"] + services["node"]["volumes"])
    for mounted in ("../orthanc/orthanc.json", "../orthanc/autoroute.lua", "../node.toml"):
        assert mounted in mounts
        assert (DEPLOY / "docker" / mounted).resolve().is_file(), mounted
    dockerfile = REPO_ROOT / services["node"]["build"]["dockerfile"]
    assert dockerfile.is_file()


def test_postgres_compose_shares_the_job_log_and_the_data_volume() -> None:
    """compose.postgres.yaml: a receiver and scalable workers with the deploy/postgres
    configurations (which the node loads: roles, the same database), one data volume."""
    yaml = pytest.importorskip("yaml")
    from dicom_node.config import load_config

    compose = yaml.safe_load((DEPLOY / "docker" / "compose.postgres.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"postgres", "orthanc", "receiver", "worker"}
    configs = {}
    for name, roles in (("receiver", ("receive",)), ("worker", ("process",))):
        mounts = services[name]["volumes"]
        assert "node-data:/var/lib/rtfsyn" in mounts
        toml = next(m.split(":")[0] for m in mounts if m.endswith(":/etc/rtfsyn/node.toml:ro"))
        configs[name] = load_config((DEPLOY / "docker" / toml).resolve())
        assert configs[name].node.roles == roles
        assert str(configs[name].node.data_dir) == "/var/lib/rtfsyn"
    assert configs["receiver"].database.url == configs["worker"].database.url
    url = configs["worker"].database.url
    env = services["postgres"]["environment"]
    assert f"{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@postgres:5432/" \
           f"{env['POSTGRES_DB']}" in url


def test_autoroute_script_modality_is_configurable() -> None:
    text = autoroute_script("node_b")
    assert "RTFSYN_MODALITY = 'node_b'" in text
    assert text.count("RTFSYN_MODALITY = ") == 1
    with pytest.raises(ValueError, match="modality name"):
        autoroute_script("bad name'")


@pytest.mark.external
def test_orthanc_starts_with_the_deployed_configuration(tmp_path: Path) -> None:
    """The trial configuration (credentials, modality, Lua, dictionary) is accepted by Orthanc."""
    require(ORTHANC_BIN)
    config = json.loads((DEPLOY / "orthanc" / "orthanc.json").read_text())
    http_port = free_port()
    config.update(StorageDirectory=str(tmp_path / "db"), IndexDirectory=str(tmp_path / "db"),
                  LuaScripts=[str(AUTOROUTE_LUA)], DicomPort=free_port(), HttpPort=http_port,
                  RemoteAccessAllowed=False)
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    user, password = next(iter(config["RegisteredUsers"].items()))
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def modalities() -> dict | None:
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/modalities?expand",
                                         headers={"Authorization": auth})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            return None

    orthanc = ManagedProcess("Orthanc", [str(ORTHANC_BIN), str(path)], tmp_path / "orthanc.log")
    orthanc.start()
    try:
        found = wait_until(modalities, timeout_s=30, what="Orthanc REST", alive=orthanc.exited)
    finally:
        orthanc.stop()
    assert found["rtfsyn"]["AET"] == "RTFSYN"


@pytest.mark.external
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = (DEPLOY / "systemd" / "rtfsyn-node.service").read_text()
    assert "ExecStart=/opt/rtfsyn/venv/bin/rtfsyn serve --config /etc/rtfsyn/node.toml" in unit
    # The venv does not exist here: point ExecStart at a binary that does.
    local = tmp_path / "rtfsyn-node.service"
    true = shutil.which("true") or "/bin/true"
    local.write_text(unit.replace("/opt/rtfsyn/venv/bin/rtfsyn", true))
    done = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True,
                          timeout=60, check=False)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if "rtfsyn-node.service" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr
