"""The ``rtmpq`` command: one subcommand per node kind, ``up`` runs them all in one process."""

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from . import __version__
from .config import DEFAULT_RTMP_PORT, IngestConfig


def host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """'HOST:PORT', ':PORT' or 'HOST' (with a default port) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    host = host.strip("[]") or "0.0.0.0"
    if not port:
        if default_port is None:
            raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
        return host, default_port
    try:
        value = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: port must be a number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: port out of range")
    return host, value


def _add_ingest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rtmp", metavar="HOST:PORT", type=lambda t: host_port(t, DEFAULT_RTMP_PORT),
                   default=("0.0.0.0", DEFAULT_RTMP_PORT),
                   help=f"where publishers connect (default 0.0.0.0:{DEFAULT_RTMP_PORT}); "
                        "OBS/ffmpeg publish to rtmp://HOST:PORT/live/<stream key>")
    p.add_argument("--record", metavar="DIR", type=Path,
                   help="record every publish session as DIR/live/<key>-<UTC start>.flv "
                        "(an exact remux of the received tags)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtmpq",
        description="Live video transport: RTMP in, Media over QUIC (draft 16) through relays, LL-HLS out.",
    )
    parser.add_argument("--version", action="version", version=f"rtmpq {__version__}")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log verbosity (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="run every node in one process (the default deployment)",
                        description="Run ingest (and the other nodes as they land) in one process.")
    _add_ingest_arguments(up)

    ingest = sub.add_parser("ingest", help="accept RTMP publishers",
                            description="Accept RTMP publishes (OBS, ffmpeg, GStreamer) as broadcasts.")
    _add_ingest_arguments(ingest)
    return parser


def _ingest_config(args) -> IngestConfig:
    host, port = args.rtmp
    return IngestConfig(rtmp_host=host, rtmp_port=port, record_dir=args.record)


async def _run(args) -> None:
    from .nodes.ingest import run_ingest

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.command in ("up", "ingest"):
        await run_ingest(_ingest_config(args), stop=stop)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_run(args))
    except OSError as exc:
        print(f"rtmpq: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
