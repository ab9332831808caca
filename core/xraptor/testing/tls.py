"""A throw-away TLS certificate for tests of ``rediss://``, ``tls://`` and ``wss://``."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """Write a one-day self-signed certificate for 127.0.0.1 and localhost into ``folder``.

    Returns ``(cert, key)`` (PEM files); the certificate is its own CA.

    :raises FileNotFoundError: when the ``openssl`` command is not installed
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise FileNotFoundError("self_signed_cert needs the openssl command")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
