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
                        description="Run the RTMP ingest, a MoQ relay (QUIC, draft 16) and the LL-HLS edge in one "
                                    "process. Watch http://HOST:8080/live/<key>/ or subscribe with "
                                    "rtmpq sub moqt://HOST:4443/live/<key> --insecure")
    _add_ingest_arguments(up)
    _add_moq_server_arguments(up)
    _add_http_arguments(up)

    sub_cmd = sub.add_parser("sub", help="subscribe to a broadcast over MoQ and print its objects",
                             description="Subscribe to moqt://HOST:PORT/live/<key>: prints one JSON line per "
                                         "object with --json, and a summary. Exit status 1 when nothing came.")
    sub_cmd.add_argument("url", help="moqt://HOST:PORT/<app>/<key>")
    sub_cmd.add_argument("--frames", type=int, help="stop after this many media objects")
    sub_cmd.add_argument("--seconds", type=float, help="stop after this many seconds")
    sub_cmd.add_argument("--json", action="store_true", help="one JSON line per object")
    _add_backend_argument(sub_cmd)
    sub_cmd.add_argument("--insecure", action="store_true", help="do not verify the server certificate")
    sub_cmd.add_argument("--cafile", help="verify the server certificate against this CA file")
    sub_cmd.add_argument("--fingerprint", help="accept only this SHA-256 certificate fingerprint (hex)")
    sub_cmd.add_argument("--delivery-timeout", type=float, metavar="S",
                         help="latency budget: the relay drops groups older than this (seconds)")

    ingest = sub.add_parser("ingest", help="accept RTMP publishers",
                            description="Accept RTMP publishes (OBS, ffmpeg, GStreamer) as broadcasts; with "
                                        "--upstream, publish them into a remote MoQ relay.")
    _add_ingest_arguments(ingest)
    ingest.add_argument("--upstream", metavar="URL", help="moqt://HOST:PORT of the relay to publish into")
    _add_client_tls_arguments(ingest)

    relay = sub.add_parser("relay", help="a MoQ relay (fan-out with a group cache), chainable",
                           description="Serve MoQ subscribers; tracks come from publishers that announce to "
                                       "this relay, or, with --upstream, from the relay above (on demand).")
    _add_moq_server_arguments(relay)
    relay.add_argument("--upstream", metavar="URL", help="moqt://HOST:PORT of the relay above")
    _add_client_tls_arguments(relay)

    edge = sub.add_parser("edge", help="LL-HLS over HTTP, fed over MoQ",
                          description="Serve http://HOST:PORT/live/<key>/index.m3u8, subscribing to the "
                                      "broadcast upstream when a player first asks for it.")
    edge.add_argument("--upstream", metavar="URL", required=True, help="moqt://HOST:PORT of a relay")
    _add_http_arguments(edge)
    _add_client_tls_arguments(edge)
    return parser


def _add_moq_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--moq", metavar="HOST:PORT", type=lambda t: host_port(t, 4443), default=("0.0.0.0", 4443),
                   help="UDP address of the MoQ (QUIC) listener (default 0.0.0.0:4443)")
    p.add_argument("--cert", type=Path, help="TLS certificate (PEM); default: self-signed, made on first start")
    p.add_argument("--key", type=Path, help="TLS private key (PEM) for --cert")
    p.add_argument("--state-dir", type=Path, help="where the self-signed certificate is kept "
                                                  "(default ~/.local/state/rtmpq)")
    _add_backend_argument(p)


def _add_backend_argument(p: argparse.ArgumentParser) -> None:
    if "--quic-backend" in p._option_string_actions:  # a node that both serves and dials QUIC
        return
    p.add_argument("--quic-backend", choices=["aioquic", "aiopquic"], default="aioquic",
                   help="QUIC library: aioquic (pure Python, default) or aiopquic (picoquic, faster)")


def _add_client_tls_arguments(p: argparse.ArgumentParser) -> None:
    _add_backend_argument(p)
    p.add_argument("--insecure", action="store_true", help="do not verify the upstream's certificate")
    p.add_argument("--cafile", help="verify the upstream's certificate against this CA file")
    p.add_argument("--fingerprint", help="accept only this SHA-256 certificate fingerprint (hex) upstream")


def _client_tls(args) -> dict:
    return {"insecure": args.insecure, "cafile": args.cafile, "fingerprint": args.fingerprint,
            "backend": args.quic_backend}


def _add_http_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http", metavar="HOST:PORT", type=lambda t: host_port(t, 8080), default=("0.0.0.0", 8080),
                   help="LL-HLS edge: players open http://HOST:PORT/live/<key>/index.m3u8 (default 0.0.0.0:8080)")
    p.add_argument("--static", type=Path, default=Path("var/static"),
                   help="directory holding hls.min.js for the player page (default var/static; make hlsjs)")


def _http_config(args):
    from .nodes.up import HttpConfig

    host, port = args.http
    return HttpConfig(host=host, port=port, static_dir=args.static)


def _moq_config(args):
    from .nodes.up import MoqConfig

    host, port = args.moq
    config = MoqConfig(host=host, port=port, certfile=args.cert, keyfile=args.key, backend=args.quic_backend)
    if args.state_dir:
        config.state_dir = args.state_dir
    return config


def _ingest_config(args) -> IngestConfig:
    host, port = args.rtmp
    return IngestConfig(rtmp_host=host, rtmp_port=port, record_dir=args.record)


async def _run(args) -> None:
    from .nodes.ingest import run_ingest

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if args.command == "up":
        from .nodes.up import run_up

        await run_up(_ingest_config(args), _moq_config(args), _http_config(args), stop)
    elif args.command == "ingest":
        if args.upstream:
            from .nodes.nodes import run_ingest_upstream

            await run_ingest_upstream(_ingest_config(args), args.upstream, _client_tls(args), stop)
        else:
            await run_ingest(_ingest_config(args), stop=stop)
    elif args.command == "relay":
        from .nodes.nodes import run_relay

        await run_relay(_moq_config(args), args.upstream, _client_tls(args), stop)
    elif args.command == "edge":
        from .nodes.nodes import run_edge

        await run_edge(_http_config(args), args.upstream, _client_tls(args), stop)
    elif args.command == "sub":
        from .nodes.sub import run_sub

        return await run_sub(args, stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return asyncio.run(_run(args)) or 0
    except (OSError, ValueError) as exc:
        print(f"rtmpq: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
