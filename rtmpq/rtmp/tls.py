"""The RTMPS listener's TLS context: the configured certificate, or the node's self-signed one."""

import logging
import ssl
from pathlib import Path

from ..config import IngestConfig
from ..moq.tls import ensure_self_signed, fingerprint, load_cert_chain

log = logging.getLogger("rtmpq.rtmp")


def rtmps_context(config: IngestConfig, state_dir: Path) -> ssl.SSLContext:
    """A server context for [rtmp] tls_cert/tls_key; neither set: the self-signed pair the MoQ
    listener uses (``state_dir``/tls), said in the log with how a streamer can check it.
    A file that cannot be read or does not hold a matching pair is a ConfigError."""
    cert, key = config.tls_cert, config.tls_key
    self_signed = cert is None or key is None  # validate() refuses one without the other
    if self_signed:
        cert, key = ensure_self_signed(state_dir / "tls")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_chain(ctx, cert, key, "rtmp.tls_cert/rtmp.tls_key")
    if self_signed:
        log.warning("RTMPS uses the node's self-signed certificate %s (sha256 %s): encoders do not check "
                    "it, so the stream key is hidden from onlookers but not from a man in the middle; give "
                    "--rtmps-cert/--rtmps-key ([rtmp] tls_cert/tls_key) from a CA to let them verify it, "
                    "or compare this fingerprint with: openssl s_client -connect HOST:PORT </dev/null "
                    "| openssl x509 -noout -fingerprint -sha256", cert, fingerprint(cert))
    return ctx
