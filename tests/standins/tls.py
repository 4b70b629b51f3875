"""A throwaway certificate authority for HTTPS stand-ins, made with trustme."""

from __future__ import annotations

import logging
import ssl
import tempfile
import threading
from pathlib import Path

import trustme

logger = logging.getLogger(__name__)

DEFAULT_NAMES = ("localhost", "127.0.0.1")


class TestCA:
    """A test CA whose PEM file clients (httpx, mitmproxy) can be configured to trust.

    The key pair lives in memory and in a private temporary folder that is removed
    with `cleanup()`. It signs server certificates for any names a test asks for.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self) -> None:
        self._ca = trustme.CA(organization_name="meterway stand-in CA")
        self._folder = tempfile.TemporaryDirectory(prefix="meterway-ca-")
        self.ca_pem_path = Path(self._folder.name) / "ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_pem_path))

    @property
    def ca_pem(self) -> bytes:
        """Return the CA certificate in PEM form."""
        return self._ca.cert_pem.bytes()

    def server_context(self, names: tuple[str, ...] | list[str] = ()) -> ssl.SSLContext:
        """Create a server SSLContext whose certificate covers localhost, 127.0.0.1 and `names`."""
        all_names = list(dict.fromkeys([*DEFAULT_NAMES, *names]))
        cert = self._ca.issue_cert(*all_names)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        # aiohttp serves HTTP/1.1 only, so ALPN names just that: a client offering h2
        # as well (mitmproxy does) settles on HTTP/1.1 during the handshake.
        context.set_alpn_protocols(["http/1.1"])
        return context

    def client_context(self) -> ssl.SSLContext:
        """Create a client SSLContext that trusts this CA and nothing else."""
        context = ssl.create_default_context()
        self._ca.configure_trust(context)
        return context

    def cleanup(self) -> None:
        """Delete the PEM file and its folder."""
        self._folder.cleanup()


_shared_lock = threading.Lock()
_shared_ca: TestCA | None = None


def shared_ca() -> TestCA:
    """Return the process-wide test CA, creating it on first use.

    One CA per process keeps certificate generation (about 50 ms each) out of every test,
    and lets a gateway started once trust every HTTPS stand-in.
    """
    global _shared_ca
    with _shared_lock:
        if _shared_ca is None:
            _shared_ca = TestCA()
            logger.info("created stand-in CA at %s", _shared_ca.ca_pem_path)
        return _shared_ca
