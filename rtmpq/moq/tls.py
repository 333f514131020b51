"""TLS material for QUIC: a self-signed certificate made on first start, and SHA-256 pinning."""

import datetime
import fcntl
import hashlib
import ipaddress
import logging
import os
import re
import ssl
from pathlib import Path

from ..config import ConfigError

log = logging.getLogger("rtmpq.moq")

# Validity of the certificate generated on first start.
SELF_SIGNED_DAYS = 365


def ensure_self_signed(directory: str | Path, hostname: str = "localhost") -> tuple[Path, Path]:
    """(cert, key) in ``directory``: made once (ECDSA P-256), reused afterwards. A directory that
    cannot be made or written is a ConfigError that names [moq] state_dir."""
    directory = Path(directory)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # nodes that share a state dir and start together: one makes the pair, the others take it
        # (each made its own, and a node could log and serve a certificate the file no longer held)
        with open(directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if cert_path.exists() and key_path.exists():
                return cert_path, key_path
            return _make_self_signed(directory, hostname)
    except OSError as exc:  # was "[Errno 20] Not a directory: '.../tls'", after the RTMP listener was up
        raise ConfigError(f"moq.state_dir (--state-dir): cannot keep the node's self-signed certificate in "
                          f"{directory}: {exc.strerror or exc}") from None


def _make_self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(hostname), x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1")),
        ]), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_new(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()), 0o600)
    _write_new(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("generated a self-signed certificate in %s (sha256 %s)", directory, fingerprint(cert_path))
    return cert_path, key_path


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """``path`` replaced whole by ``data``, made with ``mode`` from the start (a private key was
    written by the umask, often readable by all, before its chmod; a node killed mid-write left
    half a file that the next start took for the pair)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "wb") as f:
        os.fchmod(f.fileno(), mode)  # (a leftover of a dead node that had our pid keeps its mode otherwise)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# One PEM certificate block: a certificate file may hold the chain after it (Let's Encrypt's
# fullchain.pem) and text before it (openssl's "Bag Attributes").
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


def fingerprint(cert_path: str | Path) -> str:
    """SHA-256 of the DER certificate (the first of the file: the node's own, before its chain),
    as hex (what ``--fingerprint`` takes)."""
    text = Path(cert_path).read_text()
    block = _PEM_CERT.search(text)
    if block is None:
        raise ValueError(f"{cert_path}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
    der = ssl.PEM_cert_to_DER_cert(block.group(0))
    return hashlib.sha256(der).hexdigest()


def load_cert_chain(ctx: ssl.SSLContext, cert, key, settings: str) -> None:
    """``ctx.load_cert_chain(cert, key)``; a file that cannot be read, is not PEM or does not hold
    a matching pair is a ConfigError that names ``settings`` and the files (each listener's TLS:
    MoQ, HTTPS, RTMPS)."""
    try:
        ctx.load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError too: not PEM, or a key of another certificate
        reason = exc.strerror or getattr(exc, "reason", None) or exc
        raise ConfigError(f"{settings}: cannot load {cert} with {key}: {reason}") from None


def server_pair(certfile: Path | None, keyfile: Path | None, state_dir: Path) -> tuple[Path, Path, str]:
    """(cert, key, SHA-256) of the MoQ listener: [moq] certfile/keyfile (--cert/--key), or the
    self-signed pair in ``state_dir``/tls when neither is set. A file that cannot be read, is not
    PEM or does not hold a matching pair is a ConfigError that names the settings, before a QUIC
    library says so in its own words (or, for the fingerprint, without the file's name)."""
    if certfile is None or keyfile is None:  # validate() refuses one without the other
        cert, key = ensure_self_signed(state_dir / "tls")
        return cert, key, fingerprint(cert)
    settings = "moq.certfile/moq.keyfile (--cert/--key)"
    load_cert_chain(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), certfile, keyfile, settings)
    try:
        return certfile, keyfile, fingerprint(certfile)
    except ValueError as exc:  # (no BEGIN CERTIFICATE block, though the pair loaded)
        raise ConfigError(f"{settings}: cannot load {certfile} with {keyfile}: {exc}") from None


def der_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()
