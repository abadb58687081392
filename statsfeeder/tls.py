"""The client TLS policy shared by every HTTPS peer (vCenter, vCD): verified by default
against a CA bundle or the system store; a pinned SHA-256 thumbprint trusts exactly that
certificate (self-signed vCenters are common); ``insecure`` turns verification off, loudly."""

from __future__ import annotations

import hashlib
import logging
import ssl
from urllib.parse import urlsplit

from statsfeeder.config import TLS

log = logging.getLogger(__name__)


class TLSSetupError(Exception):
    """The context could not be built; ``kind`` is "connect" or "tls"."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def client_context(tls: TLS, url: str, *, label: str, key: str,
                   timeout: float) -> ssl.SSLContext:
    """``label`` names the peer in messages ("vCenter vc1"), ``key`` the config section
    ("tls", "vcd.api.tls")."""
    if tls.insecure:
        log.warning("%s: TLS verification is OFF (%s.insecure: true)", label, key)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if tls.thumbprint:
        return _pinned(tls.thumbprint, url, label=label, key=key, timeout=timeout)
    context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _pinned(thumbprint: str, url: str, *, label: str, key: str,
            timeout: float) -> ssl.SSLContext:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    try:
        pem = ssl.get_server_certificate((host, port), timeout=timeout)
    except OSError as exc:
        raise TLSSetupError(f"{label}: cannot reach {host}:{port}: {exc}", "connect") from None
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
    if digest != thumbprint:
        raise TLSSetupError(f"{label}: certificate SHA-256 {digest} does not match "
                            f"{key}.thumbprint", "tls")
    context = ssl.create_default_context(cadata=pem)
    context.check_hostname = False  # the pin replaces the name check
    # The pinned leaf is the trust anchor even when a CA (unknown to us) signed it.
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
