"""TLS and mTLS: certificates made at test time (trustme), a real service on a free port with
`--tls-cert/--tls-key` (and `--tls-client-ca`), and the client's Run, read functions and CLI
connecting with a trusted CA, an untrusted one, plain text, and with or without a client
certificate. The web view serves HTTPS with the same certificate."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import stepstream
import trustme
from stepstream._security import resolve_security
from stepstream_server.auth import SecuritySettings
from stepstream_server.auth.tokens import new_token
from stepstream_server.config import Settings
from stepstream_server.server import Service
from stepstream_server.store.tokens import TokenStore


@dataclasses.dataclass
class Pki:
    ca: Path  # the CA that signed the service's certificate and the good client's
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path  # a CA nobody here uses
    stranger_cert: Path  # a client certificate that CA signed
    stranger_key: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, stranger = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("trainer@example.com")
    outsider = stranger.issue_cert("outsider@example.com")
    paths = {}
    for name, blob in {
        "ca": ca.cert_pem,
        "cert": server.cert_chain_pems[0],
        "key": server.private_key_pem,
        "client_cert": client.cert_chain_pems[0],
        "client_key": client.private_key_pem,
        "stranger_ca": stranger.cert_pem,
        "stranger_cert": outsider.cert_chain_pems[0],
        "stranger_key": outsider.private_key_pem,
    }.items():
        paths[name] = tmp_path / f"{name}.pem"
        blob.write_to_path(str(paths[name]))
    return Pki(**paths)


async def start(settings: Settings, pki: Pki, **security: object) -> Service:
    return await Service.start(
        dataclasses.replace(
            settings,
            web_address="127.0.0.1:0",
            security=SecuritySettings(tls_cert=pki.cert, tls_key=pki.key, **security),  # type: ignore[arg-type]
        )
    )


@pytest.fixture
async def tls_service(settings: Settings, pki: Pki) -> AsyncIterator[Service]:
    service = await start(settings, pki)
    try:
        yield service
    finally:
        await service.stop()


@pytest.fixture
async def mtls_service(settings: Settings, pki: Pki) -> AsyncIterator[Service]:
    service = await start(settings, pki, tls_client_ca=pki.ca)
    try:
        yield service
    finally:
        await service.stop()


def log_and_read(address: str, run_id: str, **connection: object) -> list[float]:
    with stepstream.Run(run_id, address=address, connect_timeout=5, **connection) as run:  # type: ignore[arg-type]
        run.log_metrics({"loss": 0.25}, step=1)
    return stepstream.read_series(run_id, "loss", address=address, **connection).values  # type: ignore[arg-type]


def refused(address: str, **connection: object) -> stepstream.RPCError:
    """The error of a read, after checking that a Run cannot be created either."""
    with pytest.raises(stepstream.RPCError) as caught:
        stepstream.Run(
            "refused", address=address, connect_timeout=2, on_unavailable="raise", **connection
        )  # type: ignore[arg-type]
    # A Run waits for the service up to connect_timeout, then says it got no answer.
    assert caught.value.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), caught.value
    assert "no answer from the stepstream service" in caught.value.message
    with pytest.raises(stepstream.RPCError) as caught:
        stepstream.list_runs(address=address, **connection)  # type: ignore[arg-type]
    return caught.value


async def test_a_client_that_trusts_the_ca_logs_and_reads(tls_service: Service, pki: Pki) -> None:
    values = await asyncio.to_thread(
        log_and_read, tls_service.address, "tls", root_certificates=pki.ca
    )
    assert values == [0.25]


async def test_the_ca_may_come_from_the_environment(
    tls_service: Service, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPSTREAM_TLS_CA", str(pki.ca))
    assert await asyncio.to_thread(log_and_read, tls_service.address, "env") == [0.25]
    runs = await asyncio.to_thread(stepstream.list_runs, address=tls_service.address)
    assert [r.run_id for r in runs] == ["env"]


async def test_a_client_that_does_not_trust_the_server_is_refused(
    tls_service: Service, pki: Pki
) -> None:
    # The system's roots do not include the test CA; nor does another CA.
    for connection in ({"tls": True}, {"root_certificates": pki.stranger_ca}):
        err = await asyncio.to_thread(refused, tls_service.address, **connection)
        assert err.code.name == "UNAVAILABLE"
    runs = await asyncio.to_thread(
        stepstream.list_runs, address=tls_service.address, root_certificates=pki.ca
    )
    assert runs == []  # nothing was created by the refused clients


async def test_plain_text_to_a_tls_port_is_refused(tls_service: Service) -> None:
    err = await asyncio.to_thread(refused, tls_service.address, tls=False)
    assert err.code.name == "UNAVAILABLE"


async def test_mtls_accepts_a_client_certificate_of_the_ca(mtls_service: Service, pki: Pki) -> None:
    values = await asyncio.to_thread(
        log_and_read,
        mtls_service.address,
        "mtls",
        root_certificates=pki.ca,
        client_certificate=pki.client_cert,
        client_key=pki.client_key,
    )
    assert values == [0.25]


async def test_mtls_refuses_a_client_without_a_certificate(mtls_service: Service, pki: Pki) -> None:
    err = await asyncio.to_thread(refused, mtls_service.address, root_certificates=pki.ca)
    assert err.code.name == "UNAVAILABLE"


async def test_mtls_refuses_a_certificate_of_another_ca(mtls_service: Service, pki: Pki) -> None:
    err = await asyncio.to_thread(
        refused,
        mtls_service.address,
        root_certificates=pki.ca,
        client_certificate=pki.stranger_cert,
        client_key=pki.stranger_key,
    )
    assert err.code.name == "UNAVAILABLE"


async def test_tls_with_a_token(settings: Settings, pki: Pki) -> None:
    service = await start(settings, pki, auth="required")
    try:
        token, record = new_token("default", "write")
        store = TokenStore(service.settings.store_url)
        store.add(record)
        store.close()
        values = await asyncio.to_thread(
            log_and_read, service.address, "both", root_certificates=pki.ca, token=token
        )
        assert values == [0.25]

        def untokened() -> stepstream.RPCError:
            with pytest.raises(stepstream.RPCError) as caught:
                stepstream.Run("refused", address=service.address, root_certificates=pki.ca)
            return caught.value

        err = await asyncio.to_thread(untokened)
        assert (err.code.name, err.reason) == ("UNAUTHENTICATED", "TOKEN_MISSING")
    finally:
        await service.stop()


async def test_the_web_view_serves_https_with_the_same_certificate(
    tls_service: Service, pki: Pki
) -> None:
    assert tls_service.web is not None and tls_service.web.url.startswith("https://")
    await asyncio.to_thread(log_and_read, tls_service.address, "web", root_certificates=pki.ca)
    info = await asyncio.to_thread(
        stepstream.get_run, "web", address=tls_service.address, root_certificates=pki.ca
    )
    assert info.url.startswith("https://")
    trusting = ssl.create_default_context(cafile=str(pki.ca))
    async with (
        aiohttp.ClientSession() as http,
        http.get(tls_service.web.url + "/api/runs", ssl=trusting) as resp,
    ):
        assert resp.status == 200
        assert [r["run_id"] for r in (await resp.json())["runs"]] == ["web"]
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(tls_service.web.url + "/api/runs", ssl=ssl.create_default_context())


async def test_the_web_view_requires_client_certificates_under_mtls(
    mtls_service: Service, pki: Pki
) -> None:
    assert mtls_service.web is not None
    with_cert = ssl.create_default_context(cafile=str(pki.ca))
    with_cert.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    async with aiohttp.ClientSession() as http:
        async with http.get(mtls_service.web.url + "/api/runs", ssl=with_cert) as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.ClientError):
            async with http.get(
                mtls_service.web.url + "/api/runs",
                ssl=ssl.create_default_context(cafile=str(pki.ca)),
            ) as resp:
                await resp.read()


async def test_the_cli_connects_over_tls(tls_service: Service, pki: Pki) -> None:
    await asyncio.to_thread(log_and_read, tls_service.address, "cli", root_certificates=pki.ca)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "stepstream.cli",
                "runs",
                "list",
                "--address",
                tls_service.address,
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )

    good = await asyncio.to_thread(cli, "--tls-ca", str(pki.ca))
    assert good.returncode == 0, good.stderr
    assert "cli" in good.stdout
    bad = await asyncio.to_thread(cli)  # plain text to the TLS port
    assert bad.returncode == 3, bad.stderr


@pytest.mark.parametrize(
    ("connection", "message"),
    [
        ({"client_certificate": b"pem"}, "client_certificate and client_key go together"),
        ({"client_key": b"pem"}, "client_certificate and client_key go together"),
        (
            {"root_certificates": "/no/such/ca.pem"},
            "root_certificates '/no/such/ca.pem' cannot be read",
        ),
        ({"root_certificates": 42}, "root_certificates must be a path or PEM bytes, got int"),
        ({"tls": "yes"}, "tls must be True, False or None"),
        ({"tls": False, "root_certificates": b"pem"}, "tls=False contradicts"),
        ({"token": "has space"}, "token must be a non-empty string without spaces"),
        ({"token": ""}, "token must be a non-empty string without spaces"),
    ],
)
def test_bad_connection_arguments_are_named(connection: dict[str, object], message: str) -> None:
    with pytest.raises(stepstream.InvalidArgumentError, match=message):
        resolve_security(**connection)  # type: ignore[arg-type]


def test_a_bad_ca_file_in_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STEPSTREAM_TLS_CA", str(tmp_path / "missing.pem"))
    with pytest.raises(stepstream.InvalidArgumentError, match=r"\$STEPSTREAM_TLS_CA"):
        resolve_security()


def test_the_token_is_not_in_the_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STEPSTREAM_TOKEN", "sst_secret")
    security = resolve_security()
    assert security.token == "sst_secret" and "sst_secret" not in repr(security)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--tls-cert", "c.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert and --tls-key"),
        (["--tls-cert", "/no/c.pem", "--tls-key", "/no/k.pem"], "cannot use --tls-cert /no/c.pem"),
    ],
)
def test_serve_refuses_unusable_tls_flags(tmp_path: Path, flags: list[str], message: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepstream_server.cli",
            "serve",
            "--address",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path / "data"),
            *flags,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and message in result.stderr, result.stderr
