"""The real `danube-api` process at its transport: a non-loopback address without TLS
is refused at start (exit 2), TLS with a certificate serves HTTPS, a request head over
64 KiB is a 431, and a client that does not finish its head is disconnected."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from danube_api.http_guard import HEAD_TIMEOUT_S, MAX_HEAD_BYTES
from tests.api.test_main import API, json_lines, run_dir, write_config
from tests.support.isolation import free_port, program_environment

__all__ = ["run_dir"]  # the fixture, used by name


def start_api(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [str(API), "--config", str(config)], stdout=log, stderr=log, env=program_environment()
        )


def wait_serving(process: subprocess.Popen[bytes], url: str, log_path: Path, **kw: object) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/healthz", timeout=5, **kw)  # type: ignore[arg-type] -- verify only
        except httpx.TransportError:
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        else:
            return


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture
def served(run_dir: Path, migrated_db_path: Path) -> Iterator[int]:
    """A plain-HTTP `danube-api` on loopback; yields its port."""
    port = free_port()
    config = write_config(run_dir, migrated_db_path, port)
    log_path = run_dir / "api.log"
    process = start_api(config, log_path)
    try:
        wait_serving(process, f"http://127.0.0.1:{port}", log_path)
        yield port
    finally:
        stop(process)


def test_a_non_loopback_host_without_tls_is_refused_with_exit_2(run_dir: Path):
    config = write_config(run_dir, run_dir / "unused.db", free_port())
    config.write_text(config.read_text().replace('host = "127.0.0.1"', 'host = "0.0.0.0"'))
    done = subprocess.run(
        [str(API), "--config", str(config), "--schema-wait", "0"],
        capture_output=True,
        env=program_environment(),
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    (line,) = [line for line in json_lines(done.stderr.decode()) if line["level"] == "error"]
    assert "api.tls_cert" in line["detail"]
    assert "api.insecure_http" in line["detail"]


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "api.crt", directory / "api.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


def test_tls_serves_https_with_the_configured_certificate(run_dir: Path, migrated_db_path: Path):
    cert, key = self_signed(run_dir)
    port = free_port()
    config = write_config(run_dir, migrated_db_path, port)
    config.write_text(config.read_text() + f'tls_cert = "{cert}"\ntls_key = "{key}"\n')
    log_path = run_dir / "api.log"
    process = start_api(config, log_path)
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        wait_serving(process, f"https://127.0.0.1:{port}", log_path, verify=trust)
        answer = httpx.get(f"https://127.0.0.1:{port}/api/v1/user", verify=trust, timeout=10)
        assert answer.status_code == 401
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10)
    finally:
        stop(process)


def test_a_head_over_64_kib_is_answered_431(served: int):
    big = "x" * (MAX_HEAD_BYTES + 1)
    with socket.create_connection(("127.0.0.1", served), timeout=30) as conn:
        conn.sendall(f"GET /healthz HTTP/1.1\r\nhost: a\r\nx-big: {big}\r\n\r\n".encode())
        answer = conn.recv(4096)
    assert answer.startswith(b"HTTP/1.1 431 ")
    fine = httpx.get(f"http://127.0.0.1:{served}/healthz", headers={"x-big": "x" * 60_000})
    assert fine.status_code == 200


def test_a_client_that_does_not_finish_its_head_is_disconnected(served: int):
    with socket.create_connection(("127.0.0.1", served), timeout=HEAD_TIMEOUT_S * 4) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nhost: a\r\n")
        started = time.monotonic()
        # The server closes: recv returns b"" (no answer); a hang fails by the timeout.
        assert conn.recv(4096) == b""
        assert time.monotonic() - started < HEAD_TIMEOUT_S * 4
