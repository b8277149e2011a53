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

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from fedseed.proto import coordinator_pb2 as pb
from fedseed.proto import coordinator_pb2_grpc as pb_grpc
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
    coordinator = services["coordinator"]
    # TLS on, the token a mounted secret (never an environment value in the file), secrets
    # that deploy/make-certs.sh writes.
    secrets = compose["secrets"]
    assert {name: spec["file"] for name, spec in secrets.items()} == {
        "fedseed_token": "./secrets/token", "tls_cert": "./secrets/coordinator.crt",
        "tls_key": "./secrets/coordinator.key", "tls_ca": "./secrets/ca.crt",
    }  # fmt: skip
    for name, service in services.items():
        assert "environment" not in service or "FEDSEED_TOKEN" not in service["environment"], name
        assert _args_value(service["command"], "--token-file") == "/run/secrets/fedseed_token", name
    for client in clients.values():
        assert _args_value(client["command"], "--tls-ca") == "/run/secrets/tls_ca"
        assert "tls_key" not in client["secrets"]  # a client never holds the coordinator's key
    assert _args_value(coordinator["command"], "--tls-cert") == "/run/secrets/tls_cert"
    assert _args_value(coordinator["command"], "--tls-key") == "/run/secrets/tls_key"
    assert "--tls-ca" in coordinator["healthcheck"]["test"]
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
    # TLS on and the token a mounted Secret, for the coordinator and the clients alike.
    container = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"tls": "fedseed-tls", "token": "fedseed-token"}
    assert _args_value(container["args"], "--tls-cert") == mounts["tls"] + "/tls.crt"
    assert _args_value(container["args"], "--tls-key") == mounts["tls"] + "/tls.key"
    assert _args_value(container["args"], "--token-file") == mounts["token"] + "/token"
    for probe_spec in (container["readinessProbe"], container["livenessProbe"]):
        assert "--tls-ca" in probe_spec["exec"]["command"]
    client_pod = job["template"]["spec"]
    client_mounts = {m["name"]: m["mountPath"] for m in client_pod["containers"][0]["volumeMounts"]}
    client_secrets = {v["name"]: v["secret"] for v in client_pod["volumes"]}
    assert client_secrets["tls-ca"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]  # not the key
    assert _args_value(args, "--tls-ca") == client_mounts["tls-ca"] + "/ca.crt"
    assert _args_value(args, "--token-file") == client_mounts["token"] + "/token"
    for doc in (deployment, docs[("Job", "fedseed-clients")]):
        assert "FEDSEED_TOKEN" not in yaml.safe_dump(doc)  # no token in an environment variable


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


def test_systemd_units_serve_tls_with_credentials() -> None:
    coordinator = (DEPLOY / "systemd" / "fedseed-coordinator.service").read_text()
    client = (DEPLOY / "systemd" / "fedseed-client@.service").read_text()
    for flag, credential in (("--tls-cert", "tls_cert"), ("--tls-key", "tls_key"), ("--token-file", "token")):
        assert f"LoadCredential={credential}:" in coordinator
        assert f"{flag} ${{CREDENTIALS_DIRECTORY}}/{credential}" in coordinator
    for flag, credential in (("--tls-ca", "tls_ca"), ("--token-file", "token")):
        assert f"LoadCredential={credential}:" in client
        assert f"{flag} ${{CREDENTIALS_DIRECTORY}}/{credential}" in client
    assert "FEDSEED_TOKEN" not in coordinator + client


def test_the_image_check_script_parses_and_uses_the_images_own_commands() -> None:
    # deploy/check-images.sh is run by hand (too long for CI); here: it parses, builds every
    # Dockerfile, and starts what the images themselves declare.
    script = DEPLOY / "check-images.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    built = re.search(r"for image in ([a-z ]+); do", text)
    assert built and sorted(built.group(1).split()) == sorted(p.name.split(".")[0] for p in DOCKERFILES)
    assert '-f "deploy/docker/$image.Dockerfile"' in text and "--isolation chroot" in text
    assert ".Config.Entrypoint" in text and ".Config.Cmd" in text and ".HealthCheck.Test" in text
    for dockerfile in DOCKERFILES:
        assert "ARG BASE_IMAGE=" in dockerfile.read_text().split("\nFROM", 1)[0]


def test_the_coordinator_image_defaults_to_tls_and_a_token_file() -> None:
    text = (DEPLOY / "docker" / "coordinator.Dockerfile").read_text()
    command = text.split("\nCMD ", 1)[1]
    for flag in ("--tls-cert", "--tls-key", "--token-file"):
        assert f'"{flag}"' in command, flag
    assert '"--tls-ca"' in text.split("HEALTHCHECK", 1)[1].split("\n\n")[0].split("ENTRYPOINT")[0]


# -- TLS as the deploy files set it up, for real ---------------------------------------------


def _fedseed(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "fedseed"), *args], capture_output=True, text=True, timeout=timeout)


def test_make_certs_and_a_tls_coordinator_started_with_the_deploy_arguments(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    made = subprocess.run(
        [str(DEPLOY / "make-certs.sh"), str(secrets)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "FEDSEED_SECRETS_UID": str(os.getuid())},
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert {p.name for p in secrets.iterdir()} == {
        "ca.crt",
        "ca.key",
        "coordinator.crt",
        "coordinator.key",
        "token",
    }
    assert (secrets / "token").stat().st_mode & 0o077 == 0 and (
        secrets / "coordinator.key"
    ).stat().st_mode & 0o077 == 0
    again = subprocess.run([str(DEPLOY / "make-certs.sh"), str(secrets)], capture_output=True, text=True)
    assert again.returncode == 2 and "already holds" in again.stderr  # never overwritten
    # The coordinator as Compose starts it: all interfaces, TLS, the token from a file.
    port = _free_port()
    command = [
        str(BIN / "fedseed"), "coordinator", "--config", str(DEPLOY / "configs" / "coordinator.toml"),
        "--address", f"0.0.0.0:{port}", "--database", str(tmp_path / "c.db"),
        "--tls-cert", str(secrets / "coordinator.crt"), "--tls-key", str(secrets / "coordinator.key"),
        "--token-file", str(secrets / "token"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "FEDSEED_TOKEN"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        ca = (secrets / "ca.crt").read_bytes()
        deadline = time.monotonic() + 60
        while not probe(f"127.0.0.1:{port}", 1.0, ca) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        # The image's health check, as compose.yaml and the Kubernetes probes run it.
        checked = subprocess.run(
            [sys.executable, "-m", "fedseed.server.probe", "--tls-ca", str(secrets / "ca.crt"),
             f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert checked.returncode == 0 and checked.stdout.strip() == "SERVING", checked
        assert not probe(f"127.0.0.1:{port}", 1.0)  # plaintext gets no answer
        token = (secrets / "token").read_text().strip()
        channel = grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca))
        status = pb_grpc.CoordinatorStub(channel).Status(
            pb.StatusRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10
        )
        assert status.next_round == 0  # authenticated over TLS: an answer, not UNAUTHENTICATED
        channel.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_plaintext_beyond_loopback_is_refused_in_one_line(tmp_path: Path) -> None:
    config = str(DEPLOY / "configs" / "coordinator.toml")
    refused = _fedseed("coordinator", "--config", config, "--address", "0.0.0.0:0", "--database",
                       str(tmp_path / "c.db"))  # fmt: skip
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "refusing to serve on 0.0.0.0:0 without TLS" in refused.stderr
    assert not (tmp_path / "c.db").exists()  # refused before anything was created
    client = _fedseed("client", "--coordinator", "coordinator.example:50051", "--name", "c", "--token", "t")
    assert client.returncode == 2 and "refusing to send the bearer token" in client.stderr, client.stderr
    missing = _fedseed("client", "--coordinator", "127.0.0.1:1", "--name", "c", "--tls-ca",
                       str(tmp_path / "nope.pem"))  # fmt: skip
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "nope.pem" in missing.stderr
    empty = tmp_path / "token"
    empty.write_text("\n")
    no_token = _fedseed("coordinator", "--config", config, "--database", str(tmp_path / "c.db"),
                        "--token-file", str(empty))  # fmt: skip
    assert no_token.returncode == 2 and "is empty" in no_token.stderr, no_token.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
