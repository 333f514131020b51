"""One dataclass per node, with documented defaults. The CLI and the environment build them."""

from dataclasses import dataclass, field
from pathlib import Path

from .rtmp.session import SessionLimits

DEFAULT_RTMP_PORT = 1935
# Connections the RTMP listener accepts at once; more are refused at accept time.
MAX_RTMP_CONNECTIONS = 512


@dataclass
class IngestConfig:
    rtmp_host: str = "0.0.0.0"
    rtmp_port: int = DEFAULT_RTMP_PORT
    record_dir: Path | None = None  # write every publish session as FLV under this directory
    max_connections: int = MAX_RTMP_CONNECTIONS
    limits: SessionLimits = field(default_factory=SessionLimits)
