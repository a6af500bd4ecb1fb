"""Stripe's own host names on this machine: the emulator behind TLS as api.stripe.com and
meter-events.stripe.com.

A live stack sends its key and session tokens to https://*.stripe.com and nowhere else
(`meter_relay.config.is_stripe_url`), so a live stack can only be tested where those names
reach the emulator. `StripeTlsFront` holds a certificate for them, signed by a throwaway
certificate authority that `ca_bundle` names (give it to a function as REQUESTS_CA_BUNDLE), ends
TLS and relays each connection to the emulator's plain HTTP port; `stripe_hosts_resolve_here`
makes the names resolve to 127.0.0.1 in this process (the harness runs functions in-process).
"""

from __future__ import annotations

import datetime
import ipaddress
import selectors
import socket
import ssl
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

STRIPE_HOSTS = ("api.stripe.com", "meter-events.stripe.com")


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate for Stripe's hosts that it signed: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meter-relay test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(host) for host in STRIPE_HOSTS]
    names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, STRIPE_HOSTS[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(certificate.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


class StripeTlsFront:
    """TLS on a free 127.0.0.1 port for Stripe's host names, relayed to the emulator."""

    def __init__(self, upstream_port: int) -> None:
        self._upstream = ("127.0.0.1", upstream_port)
        self._directory = tempfile.TemporaryDirectory(prefix="stripe-tls-")
        ca, certificate, key = _certificates(Path(self._directory.name))
        self.ca_bundle = str(ca)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(certificate, key)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._stopped = threading.Event()

    @property
    def api_base(self) -> str:
        return f"https://{STRIPE_HOSTS[0]}:{self.port}"

    @property
    def meter_events_base(self) -> str:
        return f"https://{STRIPE_HOSTS[1]}:{self.port}"

    def __enter__(self) -> Self:
        threading.Thread(target=self._accept, name="stripe-tls", daemon=True).start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stopped.set()
        self._listener.close()
        self._directory.cleanup()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            secure = self._context.wrap_socket(client, server_side=True)
        except (ssl.SSLError, OSError):
            client.close()
            return
        with secure, socket.create_connection(self._upstream) as upstream:
            selector = selectors.DefaultSelector()
            selector.register(secure, selectors.EVENT_READ)
            selector.register(upstream, selectors.EVENT_READ)
            while not self._stopped.is_set():
                ready = {key.fileobj for key, _ in selector.select(timeout=1.0)}
                if secure.pending():
                    ready.add(secure)
                try:
                    if secure in ready and not _forward(secure, upstream):
                        return
                    if upstream in ready and not _forward(upstream, secure):
                        return
                except (ssl.SSLError, OSError):
                    return


def _forward(source: socket.socket, target: socket.socket) -> bool:
    data = source.recv(65536)
    if not data:
        return False
    target.sendall(data)
    return True


@contextmanager
def stripe_hosts_resolve_here() -> Iterator[None]:
    """In this process, Stripe's host names resolve to 127.0.0.1 (all others as before)."""
    original: Callable[..., Any] = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host in STRIPE_HOSTS:
            host = "127.0.0.1"
        return original(host, *args, **kwargs)

    socket.getaddrinfo = resolve
    try:
        yield
    finally:
        socket.getaddrinfo = original
