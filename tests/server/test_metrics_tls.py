"""The coordinator's /metrics endpoint and TLS, on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fedseed.manifest import Manifest
from fedseed.perturb.stream import STREAM_NAME
from fedseed.proto import coordinator_pb2 as pb
from fedseed.proto import coordinator_pb2_grpc as pb_grpc
from fedseed.server.app import create_server, stop_gracefully
from fedseed.server.coordinator import Coordinator, CoordinatorConfig
from fedseed.server.store import CoordinatorStore
from fedseed.settings import RunParams, RunSettings

MANIFEST = Manifest(STREAM_NAME, "sha256:base", "t", ("w",))


def _coordinator() -> Coordinator:
    params = RunParams("metrics", RunSettings(pool_size=8, local_steps=2, lr=0.1, eps=0.1))
    return Coordinator(CoordinatorStore(":memory:"), CoordinatorConfig(params, MANIFEST, clients_per_round=1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_count_rpcs_by_code_including_refused_ones() -> None:
    coordinator = _coordinator()
    server, port, health = create_server(coordinator, token="t")
    server.start()
    metrics_port = _free_port()
    http = coordinator.metrics.serve(metrics_port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            stub.Status(pb.StatusRequest(), timeout=5, metadata=[("authorization", "Bearer t")])
            with pytest.raises(grpc.RpcError):
                stub.Status(pb.StatusRequest(), timeout=5)
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    finally:
        http.shutdown()
        stop_gracefully(server, health, grace_s=1)
    assert 'fedseed_rpcs_total{code="OK",method="Status"} 1.0' in text
    assert 'fedseed_rpcs_total{code="UNAUTHENTICATED",method="Status"} 1.0' in text
    assert "fedseed_clients_active 0.0" in text


def _self_signed(tmp_path: Path) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedseed test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_tls_serves_trusting_clients_and_refuses_plaintext(tmp_path: Path) -> None:
    cert_pem, key_pem = _self_signed(tmp_path)
    server, port, health = create_server(_coordinator(), token="t", tls=(cert_pem, key_pem))
    server.start()
    auth = [("authorization", "Bearer t")]
    try:
        credentials = grpc.ssl_channel_credentials(root_certificates=cert_pem)
        with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            reply = pb_grpc.CoordinatorStub(channel).Status(pb.StatusRequest(), timeout=5, metadata=auth)
            assert reply.next_round == 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as info:
            pb_grpc.CoordinatorStub(channel).Status(pb.StatusRequest(), timeout=5, metadata=auth)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        stop_gracefully(server, health, grace_s=1)


@pytest.mark.slow
def test_client_mistakes_are_one_line_and_fast(tmp_path: Path) -> None:
    # Issue 17: a wrong CA gave 196 s of silence, a wrong token a 30-line traceback.
    cert_pem, key_pem = _self_signed(tmp_path)
    other_ca, _ = _self_signed(tmp_path)
    (tmp_path / "other-ca.pem").write_bytes(other_ca)
    tls_server, tls_port, tls_health = create_server(_coordinator(), token="t", tls=(cert_pem, key_pem))
    plain_server, plain_port, plain_health = create_server(_coordinator(), token="t")
    tls_server.start()
    plain_server.start()
    base = [sys.executable, "-m", "fedseed.client.runner", "--name", "c", "--examples", "8"]
    cases = {
        "wrong CA": (["--coordinator", f"127.0.0.1:{tls_port}", "--tls-ca", str(tmp_path / "other-ca.pem"),
                      "--token", "t"], "TLS handshake with the coordinator failed"),
        "nobody listening": (["--coordinator", f"127.0.0.1:{_free_port()}", "--connect-timeout", "3",
                              "--token", "t"], "the coordinator did not answer for"),
        "wrong token": (["--coordinator", f"127.0.0.1:{plain_port}", "--token", "nope"],
                        "the coordinator answered UNAUTHENTICATED"),
    }  # fmt: skip
    try:
        started = time.monotonic()
        procs = {
            case: subprocess.Popen(base + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for case, (args, _) in cases.items()
        }
        for case, proc in procs.items():
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 2, (case, err[-2000:])
            errors = [line for line in err.splitlines() if line.startswith("error:")]
            assert len(errors) == 1 and cases[case][1] in errors[0], (case, err[-2000:])
            assert "Traceback" not in err, case
        assert time.monotonic() - started < 120  # model loading included; no 196 s of silence
    finally:
        stop_gracefully(tls_server, tls_health, grace_s=1)
        stop_gracefully(plain_server, plain_health, grace_s=1)
