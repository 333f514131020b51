"""rtmpq: RTMP in, Media over QUIC (draft 16) through relays, LL-HLS out."""

__version__ = "0.1.0"
