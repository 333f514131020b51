"""The ``rtmpq`` command: one subcommand per node kind, ``up`` runs them all in one process.

Settings come from flags, the environment (``RTMPQ_<SECTION>_<KEY>``) and ``--config FILE``
(TOML), in that order of precedence (rtmpq/config.py); ``rtmpq config show`` prints the result.
"""

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from . import __version__
from .config import (DEFAULT_HTTP_PORT, DEFAULT_MOQ_PORT, DEFAULT_RTMP_PORT, DEFAULT_RTMPS_PORT, Config,
                     ConfigError, bundled_static_dir, load_config, show)
from .log_format import OneLineFormatter

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]
log = logging.getLogger("rtmpq.nodes")


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


def positive(kind):
    """An argparse type: a number of ``kind`` above 0 (0 or less would mean "no limit" or fail later)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{text!r}: expected {expected}") from None
        if not 0 < value < float("inf"):  # NaN fails too
            raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number more than 0")
        return value
    return parse


def _common() -> argparse.ArgumentParser:
    """Flags every command takes, before or after its name."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--config", metavar="FILE", type=Path, default=argparse.SUPPRESS,
                   help="TOML settings file (see docs/configuration.md); flags and RTMPQ_<SECTION>_<KEY> "
                        "environment variables override it. SIGHUP (kill -HUP) makes a running up, ingest, "
                        "relay or edge read its [publish.keys] and [auth] again, streams going on")
    p.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS, help="log verbosity (default INFO)")
    # set by a parent node for its child process (up's transcoder child), whose lines go to the
    # parent's stderr: "[LABEL PID]" before each logger name says whose they are
    p.add_argument("--log-label", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="rtmpq", parents=[common],
        description="Live video transport: RTMP in, Media over QUIC (draft 16) through relays, LL-HLS out.",
    )
    parser.add_argument("--version", action="version", version=f"rtmpq {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", parents=[common], help="run every node in one process (the default deployment)",
                        description="Run the RTMP ingest, a MoQ relay (QUIC, draft 16) and the LL-HLS edge in one "
                                    "process. Watch http://HOST:8080/live/<name>/ or subscribe with "
                                    "rtmpq sub moqt://HOST:4443/live/<name> --insecure. Without [publish.keys] or "
                                    "[auth] secret in --config the node is open: the stream key is the public name.")
    _add_ingest_arguments(up)
    _add_moq_server_arguments(up)
    _add_http_arguments(up)
    _add_ladder_argument(up, "none")
    _add_directory_argument(up, "register the broadcasts published here, so relays and edges on other hosts "
                                "find them")

    sub_cmd = sub.add_parser("sub", parents=[common], help="subscribe to a broadcast over MoQ and print its objects",
                             description="Subscribe to moqt://HOST:PORT/live/<name>: prints one JSON line per "
                                         "object with --json, and a summary. Waits for a broadcast that is not "
                                         "live yet (--wait); follows its publisher's reconnects. Exit status 1 "
                                         "when nothing came, the server cannot be reached, or the subscription "
                                         "ended on an error (its server lost and not back within --wait).")
    sub_cmd.add_argument("url", help="moqt://HOST:PORT/<app>/<name>")
    sub_cmd.add_argument("--frames", type=positive(int), help="stop after this many media objects")
    sub_cmd.add_argument("--seconds", type=positive(float), help="stop after this many seconds")
    sub_cmd.add_argument("--json", action="store_true", help="one JSON line per object")
    sub_cmd.add_argument("--delivery-timeout", type=positive(float), metavar="S",
                         help="latency budget: the relay drops groups older than this (seconds)")
    sub_cmd.add_argument("--wait", type=float, metavar="S",
                         help="how long to wait for a broadcast that is not live yet, or for a --track "
                              "its catalog does not list (default 30)")
    sub_cmd.add_argument("--token", help="playback token (JWT) when the server requires one; other users see "
                                         "arguments in ps: prefer the environment variable RTMPQ_TOKEN")
    sub_cmd.add_argument("--track", action="append", metavar="NAME",
                         help="subscribe to this track (repeat for more); default: the catalog's tracks, one "
                              "rendition per altGroup (the source's)")
    sub_cmd.add_argument("--rendition", metavar="RUNG",
                         help="take this rendition of each altGroup instead of the source's, e.g. 480p (the "
                              "source's until a catalog lists it; said when none does within 3 s)")
    _add_client_tls_arguments(sub_cmd)

    ingest = sub.add_parser("ingest", parents=[common], help="accept RTMP publishers",
                            description="Accept RTMP publishes (OBS, ffmpeg, GStreamer) as broadcasts; with "
                                        "--upstream, publish them into a remote MoQ relay.")
    _add_ingest_arguments(ingest)
    ingest.add_argument("--upstream", metavar="URL", help="moqt://HOST:PORT of the relay to publish into")
    _add_client_tls_arguments(ingest)
    _add_ops_http_arguments(ingest)
    _add_directory_argument(ingest, "accepted for a shared config; the relay an ingest publishes into registers "
                                    "its broadcasts")

    relay = sub.add_parser("relay", parents=[common], help="a MoQ relay (fan-out with a group cache), chainable",
                           description="Serve MoQ subscribers; tracks come from publishers that announce to "
                                       "this relay, or, with --upstream, from the relay above (on demand).")
    _add_moq_server_arguments(relay)
    relay.add_argument("--upstream", metavar="URL", help="moqt://HOST:PORT of the relay above")
    _add_client_tls_arguments(relay)
    _add_ops_http_arguments(relay)
    _add_directory_argument(relay, "register what ingests publish into this relay, and subscribe to anything "
                                   "else at the origin the directory names (following it when it moves)")

    edge = sub.add_parser("edge", parents=[common], help="LL-HLS over HTTP, fed over MoQ",
                          description="Serve http://HOST:PORT/live/<name>/index.m3u8, subscribing to the "
                                      "broadcast upstream when a player first asks for it; rides through its "
                                      "upstream's restarts.")
    edge.add_argument("--upstream", metavar="URL", help="moqt://HOST:PORT of a relay (or [upstream] url)")
    _add_http_arguments(edge)
    _add_client_tls_arguments(edge)
    _add_directory_argument(edge, "with no --upstream: subscribe at each broadcast's origin as the directory names "
                                  "it, following it when it moves")

    transcode = sub.add_parser("transcode", parents=[common], help="an ABR ladder for every broadcast of a relay",
                               description="Subscribe to each broadcast the relay (--upstream) announces (or to the "
                                           "one --broadcast names) and add "
                                           "rungs (video-480p, ...) to it: H.264 made group by group from the "
                                           "source's groups, listed in the broadcast's catalog, encoded only "
                                           "while someone watches them.")
    transcode.add_argument("--upstream", metavar="URL", help="moqt://HOST:PORT of the origin relay")
    transcode.add_argument("--broadcast", metavar="NAME", help="transcode this broadcast alone (live/<name>), "
                           "without listing the relay's: followed whenever it is live")
    _add_ladder_argument(transcode, "720p,480p,360p")
    _add_client_tls_arguments(transcode)
    _add_ops_http_arguments(transcode)

    token = sub.add_parser("token", parents=[common], help="mint a JWT for publishers, viewers or nodes",
                           description="Print a signed token (JWT, HS256) with the [auth] secret of --config "
                                       "(or --secret / RTMPQ_AUTH_SECRET). Publishers use it as the stream key "
                                       "(or ?token= after it), viewers as ?token= on playlists or with "
                                       "rtmpq sub --token, nodes as [auth] node_token.")
    token.add_argument("--act", choices=["publish", "subscribe", "relay"], required=True,
                       help="what it allows: publish a name, watch it, or act as a node (relay: everything)")
    token.add_argument("--sub", default="", metavar="PATH",
                       help="the path it covers: live/studio (one broadcast), live (an app); empty: all")
    token.add_argument("--ttl", type=positive(float), default=3600.0, metavar="S",
                       help="seconds until it expires (default 3600)")
    token.add_argument("--secret", help="the shared secret (default: [auth] secret); other users see arguments "
                                        "in ps: prefer RTMPQ_AUTH_SECRET or --config")

    health = sub.add_parser("health", parents=[common], help="exit 0 if the node on this host answers /healthz",
                            description="GET /healthz of the HTTP listener of the node that runs with this state "
                                        "dir (it writes its listener's URL to <state dir>/http.url: the port its "
                                        "--http, config file or environment gave). Exit 0 if it answers 200, else "
                                        "1 and why. The image's HEALTHCHECK.")
    health.add_argument("--state-dir", type=Path, help="the node's state dir (default: [moq] state_dir, "
                                                       "RTMPQ_MOQ_STATE_DIR, ~/.local/state/rtmpq)")

    config = sub.add_parser("config", parents=[common], help="print or check the effective configuration",
                            description="Print the configuration that --config, the environment and the "
                                        "defaults make, as TOML, with secrets masked; or check it and the "
                                        "files it names without starting anything.")
    config.add_argument("action", nargs="?", choices=["show", "check"], default="show",
                        help="show (the default): print it; check: exit 0 if a node would start with it, "
                             "else 2 and one line per setting that stops it (certificates and CA files that "
                             "do not load, a record_dir or state_dir that cannot be written)")
    return parser


def _add_ingest_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rtmp", metavar="HOST:PORT", type=lambda t: host_port(t, DEFAULT_RTMP_PORT),
                   help=f"where publishers connect (default 0.0.0.0:{DEFAULT_RTMP_PORT}); "
                        "OBS/ffmpeg publish to rtmp://HOST:PORT/live/<stream key>")
    p.add_argument("--rtmps", metavar="HOST:PORT", type=lambda t: host_port(t, DEFAULT_RTMPS_PORT),
                   help="also listen for RTMP over TLS here (default: off); OBS/ffmpeg publish to "
                        "rtmps://HOST:PORT/live/<stream key>, the key encrypted on the way")
    p.add_argument("--rtmps-cert", type=Path, help="TLS certificate (PEM) for --rtmps; default: the node's "
                                                   "self-signed one (encoders do not verify it)")
    p.add_argument("--rtmps-key", type=Path, help="TLS private key (PEM) for --rtmps-cert")
    p.add_argument("--record", metavar="DIR", type=Path,
                   help="record every publish session as DIR/live/<name>-<UTC start>.flv "
                        "(the received tags; its onMetaData duration made what the file holds)")


def _add_ladder_argument(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--ladder", metavar="RUNGS",
                   help=f"rungs by height (a portrait source's: by width), e.g. 480p,360p (default {default}; "
                        "[transcode] ladder); a rung not smaller than the source is left out")


def _add_moq_server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--moq", metavar="HOST:PORT", type=lambda t: host_port(t, DEFAULT_MOQ_PORT),
                   help=f"UDP address of the MoQ (QUIC) listener (default 0.0.0.0:{DEFAULT_MOQ_PORT})")
    p.add_argument("--cert", type=Path, help="TLS certificate (PEM); default: self-signed, made on first start")
    p.add_argument("--key", type=Path, help="TLS private key (PEM) for --cert")
    p.add_argument("--state-dir", type=Path, help="where the self-signed certificate is kept "
                                                  "(default ~/.local/state/rtmpq)")
    _add_backend_argument(p)


def _add_backend_argument(p: argparse.ArgumentParser) -> None:
    if "--quic-backend" in p._option_string_actions:  # a node that both serves and dials QUIC
        return
    p.add_argument("--quic-backend", choices=["aioquic", "aiopquic"],
                   help="QUIC library: aiopquic (picoquic, default) or aioquic (pure Python; needed for --fingerprint)")


def _add_client_tls_arguments(p: argparse.ArgumentParser) -> None:
    _add_backend_argument(p)
    p.add_argument("--insecure", action="store_true", default=None, help="do not verify the upstream's certificate")
    p.add_argument("--cafile", type=Path, help="verify the upstream's certificate against this CA file")
    p.add_argument("--fingerprint", help="accept only this SHA-256 certificate fingerprint (hex) upstream "
                   "(--quic-backend aioquic; on aiopquic pin with --cafile <node cert.pem>)")


def _add_ops_http_arguments(p: argparse.ArgumentParser) -> None:
    """The HTTP listener of a node that serves no video over HTTP: metrics, health, API, status."""
    p.add_argument("--http", metavar="HOST:PORT", type=lambda t: host_port(t, DEFAULT_HTTP_PORT),
                   help="serve /metrics, /healthz, /readyz, /api/v1/broadcasts and a status page here "
                        "(default: no HTTP listener)")
    _add_http_tls_arguments(p)


def _add_directory_argument(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--directory", metavar="URL", help=f"redis://HOST:PORT of the directory of broadcasts "
                                                        f"(many hosts): {what}")


def _add_http_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http", metavar="HOST:PORT", type=lambda t: host_port(t, DEFAULT_HTTP_PORT),
                   help=f"LL-HLS edge: players open http://HOST:PORT/live/<name>/index.m3u8; also /metrics, "
                        f"/healthz, /readyz, /api/v1/broadcasts and a status page at / "
                        f"(default 0.0.0.0:{DEFAULT_HTTP_PORT})")
    p.add_argument("--static", type=Path,
                   help="directory holding hls.min.js for the player page (default: the one installed with rtmpq)")
    _add_http_tls_arguments(p)


def _add_http_tls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--http-cert", type=Path, help="TLS certificate (PEM) for the HTTP listener: serves HTTPS, "
                                                  "HTTP/2 offered by ALPN (default: plain HTTP/1.1)")
    p.add_argument("--http-key", type=Path, help="TLS private key (PEM) for --http-cert")


def _overrides(args) -> dict[tuple[str, str], object]:
    """Flags given on the command line, as (section, key) -> value (absent flags are None)."""
    get = lambda name: getattr(args, name, None)  # noqa: E731
    out: dict[tuple[str, str], object] = {}
    for flag, section in (("rtmp", "rtmp"), ("moq", "moq"), ("http", "http")):
        if get(flag) is not None:
            out[(section, "host")], out[(section, "port")] = get(flag)
    if get("http") is not None:
        out[("http", "enabled")] = True
    if get("rtmps") is not None:
        out[("rtmp", "tls_host")], out[("rtmp", "tls_port")] = get("rtmps")
    out[("rtmp", "tls_cert")] = get("rtmps_cert")
    out[("rtmp", "tls_key")] = get("rtmps_key")
    out[("rtmp", "record_dir")] = get("record")
    out[("moq", "certfile")] = get("cert")
    out[("moq", "keyfile")] = get("key")
    out[("moq", "state_dir")] = get("state_dir")
    out[("http", "static_dir")] = get("static")
    out[("http", "certfile")] = get("http_cert")
    out[("http", "keyfile")] = get("http_key")
    out[("upstream", "url")] = get("upstream") or (get("url") if args.command == "sub" else None)
    out[("upstream", "insecure")] = get("insecure")
    out[("upstream", "cafile")] = get("cafile")
    out[("upstream", "fingerprint")] = get("fingerprint")
    out[("upstream", "wait")] = get("wait")
    out[("transcode", "ladder")] = get("ladder")
    out[("directory", "url")] = get("directory")
    if get("quic_backend") is not None:
        out[("moq", "backend")] = out[("upstream", "backend")] = get("quic_backend")
    if args.command == "token":
        out[("auth", "secret")] = get("secret")
    return out


def _load(args) -> Config:
    """The configuration from the file, the environment and the flags (at start and on SIGHUP)."""
    config = load_config(getattr(args, "config", None), overrides=_overrides(args))
    if config.http.static_dir is None:
        config.http.static_dir = bundled_static_dir()
    return config


async def _run(args, config: Config) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    node = args.command != "sub"  # a node's log says why it stopped (else a stop and a crash look alike)
    if node:
        from .nodes import runtime

        runtime.raise_open_files(runtime.open_files_needed(config))
        runtime.quiet_accept_failures(loop)

    def on_signal(sig: signal.Signals) -> None:
        if node and not stop.is_set():
            log.info("%s: stopping (within [node] stop_timeout, %g s)", sig.name, config.node.stop_timeout)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    reloader = None
    if args.command in ("up", "ingest", "relay", "edge"):  # the nodes that decide who publishes and watches
        from .nodes.reload import Reloader

        reloader = Reloader(config, lambda: _load(args))
        loop.add_signal_handler(signal.SIGHUP, reloader.reload)
    elif node:  # a service manager's reload (ExecReload=kill -HUP) killed a transcoder without a word
        loop.add_signal_handler(signal.SIGHUP, log.warning,
                                "SIGHUP: a %s node reads its settings at start only: nothing reloaded", args.command)
    if args.command == "up":
        from .nodes.up import run_up

        await run_up(config, stop, reloader)
    elif args.command == "ingest":
        from .nodes.nodes import run_ingest_node

        await run_ingest_node(config, stop, reloader)
    elif args.command == "relay":
        from .nodes.nodes import run_relay

        await run_relay(config, stop)
    elif args.command == "edge":
        from .nodes.nodes import run_edge

        if not config.upstream.url and not config.directory.url:
            raise ConfigError("rtmpq edge needs --upstream moqt://HOST:PORT or --directory redis://HOST:PORT "
                              "(or [upstream] url / [directory] url)")
        await run_edge(config, stop)
    elif args.command == "transcode":
        from .nodes.transcode import run_transcode

        if not config.upstream.url:
            raise ConfigError("rtmpq transcode needs --upstream moqt://HOST:PORT (or [upstream] url)")
        await run_transcode(config, stop, broadcast=args.broadcast)
    elif args.command == "sub":
        from .nodes.sub import run_sub

        return await run_sub(args, config, stop)
    log.info("stopped")
    return 0


def _token(args, config: Config) -> int:
    from .auth.tokens import mint_token

    if not config.auth.secret:
        print("rtmpq token: no secret: give --secret, RTMPQ_AUTH_SECRET or [auth] secret in --config",
              file=sys.stderr)
        return 2
    print(mint_token(config.auth.secret, args.sub.strip("/"), args.act, args.ttl, now=time.time()))
    return 0


def _check(args, config: Config) -> int:
    """`rtmpq config check`: what the settings name is usable, checked as the nodes check it at
    start (before, a missing certificate was found only by starting a node). Binds nothing; a
    record_dir is made, as a node makes it."""
    import ssl

    from .media.recording import check_record_dir
    from .moq.tls import load_cert_chain
    from .nodes.ingest import hook_tls_context

    problems: list[str] = []

    def check(step, *args) -> None:
        try:
            step(*args)
        except ConfigError as exc:
            problems.append(str(exc))

    for cert, key, names in ((config.moq.certfile, config.moq.keyfile, "moq.certfile/moq.keyfile (--cert/--key)"),
                             (config.http.certfile, config.http.keyfile,
                              "http.certfile/http.keyfile (--http-cert/--http-key)"),
                             (config.rtmp.tls_cert, config.rtmp.tls_key,
                              "rtmp.tls_cert/rtmp.tls_key (--rtmps-cert/--rtmps-key)")):
        if cert is not None and key is not None:
            check(load_cert_chain, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, key, names)
    if config.moq.certfile is None:  # the self-signed pair: kept in state_dir/tls, made there on first start
        tls = config.moq.state_dir / "tls"
        if (tls / "cert.pem").exists() and (tls / "key.pem").exists():
            check(load_cert_chain, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), tls / "cert.pem", tls / "key.pem",
                  "moq.state_dir (--state-dir)")
        else:
            made = next(p for p in (tls, *tls.parents) if p.exists())  # what mkdir would make it in
            if not made.is_dir() or not os.access(made, os.W_OK | os.X_OK):
                problems.append(f"moq.state_dir (--state-dir): cannot keep the node's self-signed certificate in "
                                f"{tls}: {made} is not a directory it can write to")
    if config.rtmp.record_dir is not None:
        check(check_record_dir, config.rtmp.record_dir)
    check(hook_tls_context, config.publish.hook_cafile)
    if config.upstream.cafile is not None:
        try:
            ssl.create_default_context(cafile=str(config.upstream.cafile))
        except (OSError, ssl.SSLError) as exc:
            problems.append(f"upstream.cafile (--cafile): cannot load {config.upstream.cafile}: {exc}")
    for problem in problems:
        print(f"rtmpq: {problem}", file=sys.stderr)
    from .auth.tokens import MIN_SECRET_BYTES, weak_secret

    if config.auth.secret and weak_secret(config.auth.secret):  # usable, but say it as a node says it
        print(f"rtmpq: warning: auth.secret is short: use at least {MIN_SECRET_BYTES} random bytes (e.g. "
              "openssl rand -hex 32): tokens signed with a short one can be guessed", file=sys.stderr)
    if not problems:
        print(f"rtmpq: configuration OK ({getattr(args, 'config', None) or 'no --config: defaults and environment'})")
    return 2 if problems else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    label = getattr(args, "log_label", "")
    label = f"[{label.replace('%', '%%')} %(process)d] " if label else ""
    handler = logging.StreamHandler()  # (stderr) one line per message, whatever a peer sent
    handler.setFormatter(OneLineFormatter(f"%(asctime)s %(levelname)s {label}%(name)s: %(message)s"))
    logging.basicConfig(level=getattr(args, "log_level", "INFO"), handlers=[handler])
    if getattr(args, "log_level", "INFO") != "DEBUG":
        # aioquic logs each connection's QUIC version, ALPN and close at INFO ("quic: [cid] ..."):
        # three lines per MoQ session naming no peer; rtmpq.moq's lines say who did what
        logging.getLogger("quic").setLevel(logging.WARNING)
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"rtmpq: {exc}", file=sys.stderr)
        return 2
    if args.command == "config" and args.action == "check":
        return _check(args, config)
    if args.command == "config":
        print(show(config), end="")
        return 0
    if args.command == "token":
        return _token(args, config)
    if args.command == "health":
        from .ops.health import check_health

        healthy, said = check_health(config.moq.state_dir)
        print(f"rtmpq health: {said}", file=sys.stdout if healthy else sys.stderr)
        return 0 if healthy else 1
    from .nodes import runtime

    runtime.own_process()
    try:
        return asyncio.run(_run(args, config)) or 0
    except (OSError, ValueError) as exc:
        print(f"rtmpq: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
