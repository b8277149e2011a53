"""deploy/: every file is checked by the tool that understands it, offline.

No Docker engine or Kubernetes cluster runs here, so images are not built and
pods are not started (docs/deploy.md says so). What is checked: the compose
file against the Compose specification's schema, the Kubernetes manifests
against Kubernetes' API schemas (strict: unknown fields fail), the systemd
units with ``systemd-analyze verify``, the Dockerfiles with hadolint, and that
all of them agree with each other and with the repository (files they copy
exist, pins equal scripts/install.sh's, shard counts add up, the ConfigMap
carries deploy/configs/coordinator.toml verbatim).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from fedseed.server.app import create_server, stop_gracefully
from fedseed.server.cli import load_config
from fedseed.server.coordinator import Coordinator
from fedseed.server.probe import probe
from fedseed.server.store import CoordinatorStore

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))
K8S = sorted((DEPLOY / "k8s").glob("*.yaml"))
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def _args_value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


# -- compose ---------------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
         str(DEPLOY / "compose.yaml")], capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_can_fail(tmp_path: Path) -> None:
    broken = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    broken["services"]["coordinator"]["restart"] = ["not", "a", "string"]
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    result = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0


def test_compose_services_fit_together() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    for service in services.values():
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()
    clients = {name: s for name, s in services.items() if name.startswith("client-")}
    shards = sorted(int(_args_value(s["command"], "--shard")) for s in clients.values())
    assert shards == list(range(len(clients))) and len(clients) >= 2
    assert {_args_value(s["command"], "--num-shards") for s in clients.values()} == {str(len(clients))}
    for client in clients.values():
        assert _args_value(client["command"], "--coordinator") == "coordinator:50051"
        assert client["depends_on"]["coordinator"]["condition"] == "service_healthy"
        assert "FEDSEED_TOKEN" in client["environment"]
    coordinator = services["coordinator"]
    assert _args_value(coordinator["command"], "--database").startswith("/var/lib/fedseed/")
    mounted = {v.split(":")[1] for v in coordinator["volumes"]}
    assert "/var/lib/fedseed" in mounted  # the SQLite state outlives the container
    config_source = coordinator["volumes"][0].split(":")[0]
    assert (DEPLOY / config_source).is_file()


# -- Kubernetes ------------------------------------------------------------------------------


def _k8s_documents() -> list[dict[str, Any]]:
    docs = []
    for path in K8S:
        if path.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


@pytest.mark.parametrize("doc", _k8s_documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_kubernetes_manifests_follow_the_api_schema(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, "1.37.0", strict=True)


def test_kubernetes_schema_check_can_fail() -> None:
    import kubernetes_validate

    deployment = next(d for d in _k8s_documents() if d["kind"] == "Deployment")
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37.0", strict=True)


def test_kubernetes_manifests_fit_together() -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in _k8s_documents()}
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S if p.name != "kustomization.yaml")
    config_map = docs[("ConfigMap", "fedseed-coordinator-config")]
    assert config_map["data"]["coordinator.toml"] == (DEPLOY / "configs" / "coordinator.toml").read_text()
    deployment = docs[("Deployment", "fedseed-coordinator")]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    pod = deployment["spec"]["template"]["spec"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"fedseed-coordinator-state"} and ("PersistentVolumeClaim", *claims) in docs
    service = docs[("Service", "fedseed-coordinator")]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]
    job = docs[("Job", "fedseed-clients")]["spec"]
    args = job["template"]["spec"]["containers"][0]["args"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == int(_args_value(args, "--num-shards"))
    assert _args_value(args, "--shard") == "$(JOB_COMPLETION_INDEX)"
    assert _args_value(args, "--coordinator") == f"{service['metadata']['name']}:50051"


# -- systemd ---------------------------------------------------------------------------------

needs_systemd = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")


def _verify(unit: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # verify checks that ExecStart exists: point it at this checkout's installed fedseed.
    name = unit.name.replace("@.service", "@0.service")
    text = unit.read_text().replace("/opt/fedseed/.venv/bin/fedseed", str(BIN / "fedseed"))
    assert str(BIN / "fedseed") in text
    (tmp_path / name).write_text(text)
    return subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True)


@needs_systemd
@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_units_verify(unit: Path, tmp_path: Path) -> None:
    result = _verify(unit, tmp_path)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@needs_systemd
def test_systemd_verification_can_fail(tmp_path: Path) -> None:
    source = (DEPLOY / "systemd" / "fedseed-coordinator.service").read_text()
    installed = source.replace("/opt/fedseed/.venv/bin/fedseed", str(BIN / "fedseed"))
    bad_type = installed.replace("Type=exec", "Type=bogus")
    missing_binary = source.replace("/opt/fedseed/", "/nowhere/")
    for name, text in (("bad-type", bad_type), ("missing-binary", missing_binary)):
        unit = tmp_path / name / "fedseed-coordinator.service"
        unit.parent.mkdir()
        unit.write_text(text)
        result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
        assert result.returncode != 0 or result.stderr.strip(), name


# -- images ----------------------------------------------------------------------------------


def _pins(text: str) -> set[str]:
    return set(re.findall(r'"([A-Za-z0-9_.-]+==[0-9][^"]*)"', text))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_lint_clean_and_match_the_repository(dockerfile: Path) -> None:
    result = subprocess.run([str(BIN / "hadolint"), str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    for line in text.splitlines():
        if line.startswith("COPY "):
            source = line.split()[1:-1]
            assert all((REPO / s).exists() for s in source), line
    install_pins = _pins((REPO / "scripts" / "install.sh").read_text())
    assert _pins(text) == install_pins, "the image must install what scripts/install.sh installs"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "torch==2.13.0" in pyproject["project"]["dependencies"] and "torch==2.13.0" in _pins(text)
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_the_health_probe_sees_a_serving_coordinator(tmp_path: Path) -> None:
    config, _ = load_config(DEPLOY / "configs" / "coordinator.toml")
    coordinator = Coordinator(CoordinatorStore(tmp_path / "c.db"), config)
    server, port, health = create_server(coordinator, address="127.0.0.1:0", token="t")
    server.start()
    try:
        assert probe(f"127.0.0.1:{port}")
    finally:
        stop_gracefully(server, health, grace_s=0.5)
    assert not probe(f"127.0.0.1:{port}", timeout_s=1.0)
