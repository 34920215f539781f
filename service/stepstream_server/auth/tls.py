"""TLS for the gRPC port and the web view, from the same PEM files (`--tls-cert`, `--tls-key`,
and `--tls-client-ca` to require client certificates)."""

from __future__ import annotations

import ssl

import grpc

from .settings import SecuritySettings


def _read(path: object) -> bytes:
    try:
        with open(str(path), "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None


def server_credentials(security: SecuritySettings) -> grpc.ServerCredentials | None:
    """gRPC server credentials, or None for plain text."""
    if not security.tls:
        return None
    client_ca = None if security.tls_client_ca is None else _read(security.tls_client_ca)
    return grpc.ssl_server_credentials(
        [(_read(security.tls_key), _read(security.tls_cert))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def server_ssl_context(security: SecuritySettings) -> ssl.SSLContext | None:
    """The web view's HTTPS context, or None for HTTP."""
    if not security.tls:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(security.tls_cert), str(security.tls_key))
        if security.tls_client_ca is not None:
            context.load_verify_locations(str(security.tls_client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(
            f"cannot use --tls-cert {security.tls_cert} / --tls-key {security.tls_key}"
            f" / --tls-client-ca {security.tls_client_ca}: {exc}"
        ) from None
    return context


def bind(server: grpc.aio.Server, address: str, security: SecuritySettings) -> int:
    """Add the gRPC port, TLS or not; the port bound (0: could not bind)."""
    credentials = server_credentials(security)
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)
