"""Every node's settings: one dataclass per section of the config file, composed into ``Config``.

Where a value comes from, highest first: a command-line flag, the environment
(``RTMPQ_<SECTION>_<KEY>``, e.g. ``RTMPQ_AUTH_SECRET``), the TOML file given with ``--config``,
the default written here. A key this module does not know, in the file or the environment, is an
error that names it; so is a value of the wrong type.

    [rtmp]      the RTMP listener (ingest)
    [moq]       the MoQ (QUIC) listener
    [http]      the LL-HLS / HTTP listener
    [publish]   who may publish what: secret keys -> public names; publisher lifecycle
    [auth]      tokens (JWT, HS256): the shared secret, whether viewers need one, this node's own
    [upstream]  how this node reaches the node above it (relay, edge, ingest --upstream, sub)
    [transcode] the ABR ladder (rtmpq transcode, rtmpq up --ladder)
    [node]      the process: graceful stop
    [directory] many hosts: where broadcasts live, in Redis (leases, pub/sub)
"""

import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit

from .auth.refusals import MAX_REFUSED_PUBLISHES, REFUSED_PUBLISH_COOLDOWN, REFUSED_PUBLISH_WINDOW
from .directory.core import DEFAULT_TTL as DEFAULT_DIRECTORY_TTL, MAX_ENTRIES as DIRECTORY_MAX_ENTRIES, safe_url
from .edge.llhls import PART_TARGET, RUNG_GAP_AFTER, TARGET_DURATION
from .edge.silence import AUDIO_GAP_FILL
from .media.broadcast import BROADCAST_MAX_GROUP_BYTES, READER_MAX_BUFFERED_BYTES
from .media.recording import RECORDER_MAX_QUEUED_BYTES
from .errors import RtmpqError
from .moq.fanout import DEFAULT_DELIVERY_TIMEOUT, DEFAULT_SEND_BUDGET, DEFAULT_STUCK_TIMEOUT
from .moq.fetch import MAX_FETCH_BYTES
from .moq.group_cache import GROUP_CACHE_MAX_AGE, GROUP_CACHE_MAX_BYTES, GROUP_CACHE_MAX_GROUPS, CacheBounds
from .moq.reachability import REFUSED_RECONNECT_MAX
from .moq.session import (MAX_HELD_BYTES, MAX_INCOMING_DATA_STREAMS, MAX_REQUESTS, MAX_STREAM_BUFFER,
                          PARTIAL_OBJECT_TIMEOUT, SessionCaps)
from .moq.wire import MAX_OBJECT_SIZE
from .moq.waiting import MAX_WAITING_SUBSCRIBES, UPSTREAM_WAIT
from .redact import REDACTED
from .rtmp.reader import INGEST_READ_COALESCE
from .rtmp.session import MAX_PENDING_MEDIA_BYTES, SessionLimits
from .transcode.ladder import (DECODE_QUEUE_FRAMES, DEFAULT_LADDER, IDLE_STOP_SECONDS, RUNG_QUEUE_FRAMES, X264_PRESET,
                               X264_PRESETS, LadderError, parse_ladder)

DEFAULT_RTMP_PORT = 1935
DEFAULT_RTMPS_PORT = 443  # what OBS and the big services use for rtmps://
DEFAULT_MOQ_PORT = 4443
DEFAULT_HTTP_PORT = 8080
# Connections the RTMP listener accepts at once, in all and from one IP address (one address could
# otherwise hold every slot, reconnecting each handshake deadline); more are refused at accept time.
MAX_RTMP_CONNECTIONS = 512
MAX_RTMP_CONNECTIONS_PER_IP = 128
# An RTMPS connection must finish its TLS handshake within this, else it is dropped (seconds).
RTMPS_HANDSHAKE_TIMEOUT = 10.0
# A publisher that sends no media for this long (a frozen encoder, a dead link that TCP has not
# noticed) is closed and its name freed (seconds).
PUBLISH_IDLE_TIMEOUT = 10.0
# A broadcast whose publisher left is kept this long for a publisher to come back under the same
# name: viewers keep their playlists and subscriptions, group ids go on (seconds).
PUBLISH_GRACE_PERIOD = 30.0
# Seconds the ingest waits for [publish] hook_url to answer whether a publish may go on; past it the
# publish is refused (the hook decides who publishes: no answer is no). Encoders wait for the
# answer to their publish, OBS about 10 s; the RTMP layer holds what they send meanwhile.
PUBLISH_HOOK_TIMEOUT = 3.0
# Times a publish event [publish] events_url did not take (no answer, 5xx, 408, 429) is sent again,
# 1 s after the first try, then 2 s, 4 s, ...: a service restarting hears every event, in order.
PUBLISH_EVENTS_RETRIES = 3
# A playback token is checked when playback starts: the edge then hands the viewer's HLS player a
# session token of its own in the playlists' URIs, good for that one broadcast this long
# (seconds). 6 h outlasts any one sitting of a live event (the page's token, 1 h by default, does
# not) and bounds what a leaked playlist URI is good for; past it the player must start again.
PLAYBACK_SESSION = 6 * 3600.0
# How long a subscriber (rtmpq sub, an edge) waits for a broadcast that is not live yet (seconds).
SUBSCRIBE_WAIT = 30.0
# Whole groups before the live edge that an edge fetches from the relay above (joining FETCH)
# when it starts a broadcast for its first viewer, so the first playlist lists them as segments
# at once; capped by the playlist window (6 segments); 0: start at the live edge.
EDGE_FILL_GROUPS = 6
# After SIGTERM, the node exits within this many seconds whatever its peers do.
STOP_TIMEOUT = 5.0
# Graceful stop ([rtmp] reconnect_wait): seconds a publisher that can reconnect (E-RTMP capsEx
# Reconnect) has, once asked, to move (its media taken meanwhile). A client goes on to its next
# key frame, then connects and publishes elsewhere: a 2 s GoP (what OBS and the big services ask
# for) and a connect fit, and with the default stop_timeout the rest of the stop keeps its second
# (RECONNECT_STOP_RESERVE in rtmpq/nodes/ingest.py).
RECONNECT_WAIT = 4.0
# The MoQ listener (serve_moq in rtmpq/moq/transport.py): seconds a peer has from its first
# packet to complete the QUIC handshake and MoQ setup; sessions open at once, in all and from one
# IP address. QUIC has no cap of its own (specs/bad-inputs.md, "Slowloris"): a session past either
# is closed at once (INTERNAL_ERROR, "too many connections") and logged.
MOQ_HANDSHAKE_TIMEOUT = 10.0
MOQ_MAX_CONNECTIONS = 1024
MOQ_MAX_CONNECTIONS_PER_IP = 256
# Seconds of silence before QUIC closes a MoQ connection (each end PINGs at a third of it): also
# how long a node below takes to notice an upstream that died without a word where no ICMP says
# so (a host gone, a firewall that drops; a killed process on a reachable host is known sooner,
# see PEER_UNREACHABLE_GRACE in rtmpq/moq/reachability.py). Shorter: a loss is noticed sooner;
# a lossy or stalling link then loses sessions that were alive. Was 30 s before 10 s.
MOQ_IDLE_TIMEOUT = 10.0
# The shortest idle timeout taken: a third of it between PINGs must stay above a long round trip.
MOQ_MIN_IDLE_TIMEOUT = 1.0
# Bytes all MoQ sessions of a node together (its listener's and its own links to other nodes:
# upstream, directory origins) hold from their peers and have not handed on (partial objects and
# requests on incoming streams, objects held for a track alias not named yet). Each session has
# its own caps (MAX_STREAM_BUFFER 32 MiB + MAX_HELD_BYTES 8 MiB in rtmpq/moq/session.py), but
# max_connections of them within those would hold tens of GiB; past this the session holding the
# most is closed (INTERNAL_ERROR, "too many bytes held") and logged (a link reconnects).
# Live publishers hold about one object in flight per track each: 256 MiB leaves room for
# thousands of them, or for 6 sessions at their own cap.
MOQ_MAX_PARTIAL_BYTES = 256 * 1024 * 1024
# The HTTP listener (rtmpq/http/server.py): connections at once, in all and from one IP address.
HTTP_MAX_CONNECTIONS = 1024
HTTP_MAX_CONNECTIONS_PER_IP = 256
# Longest request head (request line + headers; HTTP/2: the header list) in bytes: else 431.
HTTP_MAX_HEADER_BYTES = 8192
# Longest request body, and most bytes of pipelined requests buffered unanswered (bytes).
HTTP_MAX_REQUEST_BYTES = 64 * 1024
# A request head must arrive within this after the connection opens or the last response; an
# idle keep-alive connection is closed after it (seconds).
HTTP_REQUEST_TIMEOUT = 10.0
# Each piece (64 KiB) of a response must be taken by the socket within this, else the client is
# dropped (seconds): it bounds a stall, so a slow reader (over ~6 kB/s) that keeps reading is served.
HTTP_WRITE_TIMEOUT = 10.0
# Response bytes queued in user space per connection before the writer waits for the socket.
HTTP_WRITE_BUFFER_BYTES = 64 * 1024
# HTTP/2 streams a client may have open at once.
HTTP_MAX_CONCURRENT_STREAMS = 100
# HTTP/2 streams a client may reset (RST_STREAM) in one second on one connection: past it the
# connection is told GOAWAY ENHANCE_YOUR_CALM and closed (Rapid Reset, CVE-2023-44487: a request
# and its reset at once are not bounded by max_concurrent_streams). A player cancels a few.
HTTP_MAX_STREAM_RESETS = 100
# HTTP/2 frames that ask work of us but are no request (PING, SETTINGS, PRIORITY, WINDOW_UPDATE,
# RST_STREAM, empty DATA, unknown types) a client may send in one second on one connection, plus
# 2 for each DATA frame we sent it then (a reader opens its windows as it reads): past it, GOAWAY
# ENHANCE_YOUR_CALM and closed. One such flood held a core (10 s of CPU in 10 s).
HTTP_MAX_CONTROL_FRAMES = 1000
# The edge ([http] rendition_idle): an alternate rendition (a transcoder rung) is pulled from the
# source only while players ask for it; this many seconds after its last request, the edge lets it
# go (and the rung may stop after [transcode] idle_stop).
RENDITION_IDLE_SECONDS = 15.0
# The edge ([http] max_viewers_tracked): players (address and user agent) tracked per broadcast for
# the viewer count and the live readers; about 200 bytes each (the user agent is cut to 64
# characters); more are served, not counted.
MAX_VIEWERS_TRACKED = 16384
# A separate edge ([http] max_pending_broadcasts): broadcasts it waits for at once, each opened for
# a player's request with nothing of it come from upstream yet (a MoQ session each, up to
# [upstream] wait). Past it, the one upstream said longest ago it does not have is let go for a new
# name, and with none such a new name is answered 503: requests for made-up names opened a session
# each, held by a relay's per-address limit, so real broadcasts could no longer be opened.
EDGE_MAX_PENDING_BROADCASTS = 64
# `rtmpq up --ladder`: the ladder runs in a child process per broadcast (`rtmpq transcode
# --broadcast` over the node's own MoQ listener) so that a crash of a decoder (libavcodec on a
# hostile bitstream) or an OOM kill ends only that broadcast's rungs, not every publish and viewer
# of the node nor the other broadcasts' rungs (docs/operations.md, "Where the ladder runs", has
# what it costs). A child that dies is started again after restart_min seconds,
# doubling per death up to restart_max; one that lived TRANSCODER_STABLE seconds starts from
# restart_min again (TRANSCODER_STABLE in rtmpq/nodes/transcode_child.py).
TRANSCODE_ISOLATE = True
TRANSCODER_RESTART_MIN = 0.5
TRANSCODER_RESTART_MAX = 30.0
# The shortest LL-HLS part target accepted (seconds): a part holds at least one frame, and a
# part target below the frame interval would have to shorten frames (50 ms: 20 fps).
MIN_PART_TARGET = 0.05


_PUBLIC_NAME = re.compile(r"([A-Za-z0-9_.~-]{1,64}/)?[A-Za-z0-9_.~-]{1,128}")


class ConfigError(RtmpqError, ValueError):
    """A bad config file, environment variable or flag; the message names the key."""


def default_state_dir() -> Path:
    return Path.home() / ".local" / "state" / "rtmpq"


def bundled_static_dir() -> Path:
    """Where the installed package keeps hls.min.js (package data; `make hlsjs` or the wheel
    build puts it there), whatever the current directory."""
    return Path(__file__).resolve().parent / "edge" / "static"


@dataclass
class IngestConfig:
    """[rtmp]: the RTMP listener, and the optional RTMPS (RTMP over TLS) one beside it."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_RTMP_PORT
    # RTMPS: listens only when tls_port is set; OBS/ffmpeg publish to rtmps://HOST:PORT/live/<key>
    tls_host: str = "0.0.0.0"
    tls_port: int | None = None
    tls_cert: Path | None = None  # both None: the node's self-signed pair ([moq] state_dir/tls)
    tls_key: Path | None = None
    tls_handshake_timeout: float = RTMPS_HANDSHAKE_TIMEOUT
    record_dir: Path | None = None  # write every publish session as FLV under this directory
    # bytes of a recording waiting for the disk; past it that recording stops (logged), the stream goes on
    record_max_queued_bytes: int = RECORDER_MAX_QUEUED_BYTES
    max_connections: int = MAX_RTMP_CONNECTIONS
    max_connections_per_ip: int = MAX_RTMP_CONNECTIONS_PER_IP
    # seconds the RTMP sockets go unread after a read, so one wakeup reads several messages of
    # many publishers (rtmpq/rtmp/reader.py); 0: asyncio reads each as soon as it is readable
    read_coalesce: float = INGEST_READ_COALESCE
    # bytes of media a connection may send after publish before its answer (held, then handed on)
    max_pending_media_bytes: int = MAX_PENDING_MEDIA_BYTES
    # stream key guessing: after max_refused_publishes publishes refused (unknown key, token
    # refused) from one address within refused_publish_window seconds, every publish from it is
    # refused for refused_publish_cooldown seconds (0 max_refused_publishes: never)
    max_refused_publishes: int = MAX_REFUSED_PUBLISHES
    refused_publish_window: float = REFUSED_PUBLISH_WINDOW
    refused_publish_cooldown: float = REFUSED_PUBLISH_COOLDOWN
    # graceful stop: each publisher that said it can reconnect (E-RTMP capsEx Reconnect) is asked to
    # (NetConnection.Connect.ReconnectRequest) and its media taken until it leaves, at most this many
    # seconds (and at most [node] stop_timeout less 1 s); 0: none is asked, every publish ends at once
    reconnect_wait: float = RECONNECT_WAIT
    # where it is asked to go (the request's tcUrl): rtmp(s)://HOST[:PORT][/APP], without an app
    # each publisher's own; empty: the tcUrl it connected with (the node's own address)
    reconnect_url: str = ""
    limits: SessionLimits = field(default_factory=SessionLimits)

    @property
    def session_limits(self) -> SessionLimits:
        """``limits`` with the settings of this section that the session applies."""
        return replace(self.limits, max_pending_media_bytes=self.max_pending_media_bytes)


@dataclass
class MoqConfig:
    """[moq]: the MoQ (QUIC, draft 16) listener."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_MOQ_PORT
    certfile: Path | None = None  # both None: a self-signed pair is made in state_dir/tls
    keyfile: Path | None = None
    state_dir: Path = field(default_factory=default_state_dir)
    backend: str = "aiopquic"  # QUIC library: "aiopquic" (picoquic) or "aioquic" (pure Python)
    # seconds a subscriber may acknowledge nothing it is owed before its session is closed
    stuck_timeout: float = DEFAULT_STUCK_TIMEOUT
    # seconds a peer has from its first packet to a MoQ setup (QUIC handshake included)
    handshake_timeout: float = MOQ_HANDSHAKE_TIMEOUT
    # sessions open at once, in all and from one IP address; more are closed at once
    max_connections: int = MOQ_MAX_CONNECTIONS
    max_connections_per_ip: int = MOQ_MAX_CONNECTIONS_PER_IP
    # seconds of silence before a MoQ connection (either way: listener and upstream) is closed
    idle_timeout: float = MOQ_IDLE_TIMEOUT
    # seconds an object may stay incomplete on an incoming stream before that stream is stopped
    partial_object_timeout: float = PARTIAL_OBJECT_TIMEOUT
    # bytes of partial objects (and requests) all sessions together may hold (the listener's and
    # the node's links upstream); past it the session holding the most is closed (a link reconnects)
    max_partial_bytes: int = MOQ_MAX_PARTIAL_BYTES
    # answer each new client's first packet with a QUIC Retry and serve only clients that echo its
    # token (RFC 9000 8.1): a spoofed source gets one small packet back and no connection state.
    # Costs every session one more round trip before its handshake.
    retry: bool = False
    # seconds a relay holds a SUBSCRIBE for a broadcast it does not know while its session upstream
    # (--upstream, or the origin [directory] lists) is not up, before refusing it (0: refused at once)
    upstream_wait: float = UPSTREAM_WAIT
    # SUBSCRIBEs held at once: for a session upstream (all broadcasts together), and per local
    # broadcast for a track it does not have yet (NEW_TRACK_WAIT); more are refused at once
    max_waiting_subscribes: int = MAX_WAITING_SUBSCRIBES
    # each media track's cache at a relay (late subscribers, FETCH, relays below catching up): at
    # most this many bytes (the newest group counts first; a group alone past it is not cached),
    # complete groups at most this old (seconds since their first object), at most this many groups
    group_cache_max_bytes: int = GROUP_CACHE_MAX_BYTES
    group_cache_max_age: float = GROUP_CACHE_MAX_AGE
    group_cache_max_groups: int = GROUP_CACHE_MAX_GROUPS
    # seconds an object may wait at the relay for a subscriber before its group is dropped for that
    # subscriber (a subscriber's own DELIVERY_TIMEOUT replaces it; a track's smaller one lowers it)
    delivery_timeout: float = DEFAULT_DELIVERY_TIMEOUT
    # bytes queued for one subscriber (all its tracks) before its oldest groups are dropped
    send_budget: int = DEFAULT_SEND_BUDGET
    # bytes of payload in one FETCH answer from a cache; a longer range is cut (FETCH_OK says where)
    max_fetch_bytes: int = MAX_FETCH_BYTES
    # each MoQ session's own caps (the listener's and the node's links to other nodes): requests a
    # peer may have open (more: TOO_MANY_REQUESTS, the session closed), incoming streams open at
    # once (more are stopped), bytes of unfinished objects and requests buffered from the peer's
    # streams (more: the session closed; at least one largest object, 16 MiB), bytes of objects
    # held for a track alias not named yet (the oldest are dropped)
    session_max_requests: int = MAX_REQUESTS
    session_max_streams: int = MAX_INCOMING_DATA_STREAMS
    session_max_stream_buffer: int = MAX_STREAM_BUFFER
    session_max_held_bytes: int = MAX_HELD_BYTES

    @property
    def cache_bounds(self) -> CacheBounds:
        return CacheBounds(self.group_cache_max_bytes, self.group_cache_max_age, self.group_cache_max_groups)

    @property
    def session_caps(self) -> SessionCaps:
        return SessionCaps(self.session_max_requests, self.session_max_streams, self.session_max_stream_buffer,
                           self.session_max_held_bytes)


@dataclass
class HttpConfig:
    """[http]: the HTTP listener (LL-HLS, metrics, health, API, status page)."""

    host: str = "0.0.0.0"
    port: int = DEFAULT_HTTP_PORT
    # whether the node listens: unset, rtmpq up and edge do and relay and ingest do not
    # (--http HOST:PORT turns it on for them)
    enabled: bool | None = None
    static_dir: Path | None = None  # where hls.min.js is; unset: the one installed with rtmpq
    certfile: Path | None = None  # with keyfile: HTTPS, and HTTP/2 offered by ALPN
    keyfile: Path | None = None
    max_connections: int = HTTP_MAX_CONNECTIONS
    max_connections_per_ip: int = HTTP_MAX_CONNECTIONS_PER_IP
    max_header_bytes: int = HTTP_MAX_HEADER_BYTES
    max_request_bytes: int = HTTP_MAX_REQUEST_BYTES
    request_timeout: float = HTTP_REQUEST_TIMEOUT
    write_timeout: float = HTTP_WRITE_TIMEOUT
    write_buffer_bytes: int = HTTP_WRITE_BUFFER_BYTES
    max_concurrent_streams: int = HTTP_MAX_CONCURRENT_STREAMS
    max_stream_resets: int = HTTP_MAX_STREAM_RESETS
    max_control_frames: int = HTTP_MAX_CONTROL_FRAMES
    # LL-HLS parts of at most this many seconds (PART-TARGET; see PART_TARGET in edge/llhls.py)
    part_target: float = PART_TARGET
    # EXT-X-TARGETDURATION in whole seconds, fixed for a playlist's life; 0: the first whole
    # segment's duration (see TARGET_DURATION in edge/llhls.py)
    target_duration: int = TARGET_DURATION
    # seconds without audio while the video goes on before the HLS audio gets silence (0: never;
    # see edge/silence.py)
    audio_gap_fill: float = AUDIO_GAP_FILL
    # edge: seconds after a player's last request for a transcoder rung before the edge lets it go
    rendition_idle: float = RENDITION_IDLE_SECONDS
    # edge: seconds of its source's media into a group a transcoder rung has not begun, after which
    # its playlist lists that group as a gap (when the skip was not said on the wire; see
    # RUNG_GAP_AFTER in edge/llhls.py)
    rung_gap_after: float = RUNG_GAP_AFTER
    # edge: players counted per broadcast (viewers); more are served, not counted
    max_viewers_tracked: int = MAX_VIEWERS_TRACKED
    # edge: broadcasts waited for at once, nothing of them come from upstream yet (see
    # EDGE_MAX_PENDING_BROADCASTS)
    max_pending_broadcasts: int = EDGE_MAX_PENDING_BROADCASTS


@dataclass
class PublishConfig:
    """[publish]: stream keys and the publisher lifecycle.

    ``keys`` maps secret stream keys to public names: ``"sk-1f9c2a" = "studio"`` makes a publish
    to ``rtmp://HOST/live/sk-1f9c2a`` play at ``live/studio`` (a name with a ``/`` is taken whole).
    With [auth] secret set, a JWT with ``act=publish`` is accepted as the key too (or as
    ``?token=`` after it), its ``sub`` naming the broadcast. With neither, the node is open: any
    key publishes, and the key is the public name.
    """

    keys: dict[str, str] = field(default_factory=dict)
    # http(s) URL of the operator's service that decides publishes the keys and tokens do not
    # admit (POST JSON: app, key, query, address; a 2xx answer names the broadcast)
    hook_url: str = ""
    hook_timeout: float = PUBLISH_HOOK_TIMEOUT  # (and for each call to events_url)
    # http(s) URL told when a publish starts and ends and its recording is done (POST JSON, in order)
    events_url: str = ""
    events_retries: int = PUBLISH_EVENTS_RETRIES  # times an event not taken is sent again
    # CA file (PEM) an https hook_url / events_url is checked against; None: the system's CAs
    hook_cafile: Path | None = None
    idle_timeout: float = PUBLISH_IDLE_TIMEOUT
    grace_period: float = PUBLISH_GRACE_PERIOD
    # bytes of a broadcast's group in progress kept for its new in-process readers (the edge of
    # `rtmpq up`, a transcoder); a group past it is kept only up to it
    max_group_bytes: int = BROADCAST_MAX_GROUP_BYTES
    # bytes an in-process reader of a broadcast may fall behind before its old groups are skipped
    reader_max_buffered_bytes: int = READER_MAX_BUFFERED_BYTES

    @property
    def restricted(self) -> bool:
        return bool(self.keys or self.hook_url)


@dataclass
class AuthConfig:
    """[auth]: JWTs (HS256) for publishers, viewers and nodes."""

    secret: str = ""  # shared secret that signs and checks every token; empty: no tokens accepted
    require_playback_token: bool = False  # viewers (HLS, MoQ) need a token with act=subscribe to start
    playback_session: float = PLAYBACK_SESSION  # an HLS viewer who started keeps watching this long
    node_token: str = ""  # presented to the upstream node (act=relay); minted from secret if empty

    @property
    def enabled(self) -> bool:
        return bool(self.secret)


@dataclass
class UpstreamConfig:
    """[upstream]: how this node dials the node above it."""

    url: str = ""  # moqt://HOST:PORT
    insecure: bool = False
    cafile: Path | None = None
    fingerprint: str = ""  # SHA-256 pin: needs backend "aioquic" (aiopquic pins with cafile)
    backend: str = "aiopquic"
    wait: float = SUBSCRIBE_WAIT  # for a broadcast that is not live yet
    fill_groups: int = EDGE_FILL_GROUPS  # an edge starts a broadcast with this many cached groups (FETCH)
    # seconds at most between attempts to reconnect to an upstream whose port refused (ICMP)
    refused_reconnect_max: float = REFUSED_RECONNECT_MAX


@dataclass
class TranscodeConfig:
    """[transcode]: the ABR ladder made from each broadcast's video (rtmpq/transcode/ladder.py
    names every default and its reason).

    ``ladder``: rungs by height (a portrait source's: by width), ``"480p,360p"``; empty: ``rtmpq
    up`` makes none and ``rtmpq transcode`` makes 720p,480p,360p. ``bitrates``: kbit/s per rung, ``{"480p" = "1000"}``, over
    the defaults (720p 2500, 480p 1200, 360p 700). ``preset``: libx264 preset of every rung;
    ``presets``: per rung over it, ``{"360p" = "medium"}``. A rung starts when it is first
    watched and stops ``idle_stop`` seconds after its last viewer left. ``isolate`` (``rtmpq up``):
    the ladder runs in a child process per broadcast (``rtmpq transcode --broadcast`` over the
    node's own MoQ listener), so a decoder crash ends only that broadcast's rungs, and its child is
    started again (restart_min doubling up to restart_max seconds); false: on threads of the node's
    own process.
    """

    ladder: str = ""
    bitrates: dict[str, str] = field(default_factory=dict)
    preset: str = X264_PRESET
    presets: dict[str, str] = field(default_factory=dict)
    idle_stop: float = IDLE_STOP_SECONDS
    rung_queue_frames: int = RUNG_QUEUE_FRAMES
    decode_queue_frames: int = DECODE_QUEUE_FRAMES
    isolate: bool = TRANSCODE_ISOLATE
    restart_min: float = TRANSCODER_RESTART_MIN
    restart_max: float = TRANSCODER_RESTART_MAX


@dataclass
class NodeConfig:
    """[node]: the process."""

    stop_timeout: float = STOP_TIMEOUT


@dataclass
class DirectoryConfig:
    """[directory]: where broadcasts live when there are many hosts (Redis)."""

    url: str = ""  # redis://HOST:PORT/DB; empty: no directory, nodes use [upstream] only
    ttl: float = DEFAULT_DIRECTORY_TTL  # lease of an entry: a dead origin is forgotten this long after
    node_id: str = ""  # this node's name in entries; empty: HOSTNAME-PID
    advertise: str = ""  # moqt://HOST:PORT others reach this node at; empty: from [moq] host/port
    max_entries: int = DIRECTORY_MAX_ENTRIES  # broadcasts a node knows of; more are ignored


@dataclass
class Config:
    rtmp: IngestConfig = field(default_factory=IngestConfig)
    moq: MoqConfig = field(default_factory=MoqConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    transcode: TranscodeConfig = field(default_factory=TranscodeConfig)
    node: NodeConfig = field(default_factory=NodeConfig)
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)


# Keys whose values are secrets: masked by ``show`` (a hook's URL may carry credentials).
SECRET_KEYS = {("auth", "secret"), ("auth", "node_token"), ("publish", "hook_url"), ("publish", "events_url")}
# Settings that are not read from a file or the environment (built in code).
_INTERNAL = {("rtmp", "limits")}


def _sections() -> dict[str, type]:
    return {f.name: f.type for f in fields(Config)}


def setting_prefixes() -> tuple[str, ...]:
    """The prefixes (``RTMPQ_<SECTION>_``) of the environment variables ``load_config`` reads."""
    return tuple(f"RTMPQ_{section.upper()}_" for section in _sections())


def _keys(section_type: type) -> dict[str, typing.Any]:
    hints = typing.get_type_hints(section_type)
    return {f.name: hints[f.name] for f in fields(section_type)}


def _coerce(where: str, kind, value, *, from_text: bool):
    """``value`` (from TOML, or a string from the environment) as a ``kind``."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None or (from_text and value == ""):
            return None
        return _coerce(where, inner[0], value, from_text=from_text)
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if from_text and str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if from_text and str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind in (int, float):
            expected = "an integer" if kind is int else "a number"
            # a TOML string ("1935") is text, not a number: only the environment's numbers come as text
            if isinstance(value, str) and not from_text:
                raise ValueError(f"expected {expected}, without quotes")
            if isinstance(value, bool) or not isinstance(value, (int, float, str)) or (
                    kind is int and isinstance(value, float)):
                raise ValueError(f"expected {expected}")
            try:
                number = kind(value)
            except ValueError:
                raise ValueError(f"expected {expected}") from None
            if math.isnan(number):  # passes every "below"/"above" check after it
                raise ValueError(f"expected {expected}")
            return number
        if kind is str:
            if not isinstance(value, str):
                raise ValueError("expected a string")
            return value
        if kind is Path:
            if isinstance(value, Path):
                return value
            if not isinstance(value, str):
                raise ValueError("expected a path")
            return Path(value).expanduser()
        if typing.get_origin(kind) is dict:
            if from_text:  # RTMPQ_PUBLISH_KEYS="key1=name1,key2=name2"
                items = [item.split("=", 1) for item in str(value).split(",") if item]
                if not all(len(item) == 2 for item in items):
                    raise ValueError("expected key=value pairs separated by commas")
                value = dict(items)
            if where == "transcode.bitrates" and isinstance(value, dict):  # "480p" = 1000: kbit/s as a number
                value = {k: str(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in value.items()}
            if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
                raise ValueError("expected a table of strings")
            return dict(value)
    except ValueError as exc:
        shown = "" if _secret(where) else f" (got {value!r})"
        raise ConfigError(f"{where}: {exc}{shown}") from None
    raise ConfigError(f"{where}: unsupported setting type {kind}")


def _secret(where: str) -> bool:
    section, _, key = where.partition(".")
    return (section, key.split(" ")[0]) in SECRET_KEYS or section == "publish" and key.startswith("keys")


def _unknown(what: str, name: str, known) -> ConfigError:
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown {what} {name!r}{hint}")


def load_config(path: Path | str | None = None, *, env: Mapping[str, str] | None = None,
                overrides: Mapping[tuple[str, str], typing.Any] | None = None) -> Config:
    """The effective configuration: ``overrides`` (from flags) > ``env`` > the file > defaults."""
    config = Config()
    sections = _sections()
    values: dict[tuple[str, str], tuple[typing.Any, bool]] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        for section, table in doc.items():
            if section not in sections and not isinstance(table, dict):  # a key above every [section]
                homes = [f"[{s}]" for s, kind in sections.items() if section in _keys(kind)]
                raise ConfigError(f"{section!r} is outside any section: settings go under their [section]"
                                  + (f" ({section} is in {', '.join(homes)})" if homes else ""))
            if section not in sections:
                raise _unknown("config section", f"[{section}]", [f"[{s}]" for s in sections])
            if not isinstance(table, dict):
                raise ConfigError(f"{section}: expected a [{section}] table")
            known = _keys(sections[section])
            for key, value in table.items():
                if key not in known or (section, key) in _INTERNAL:
                    raise _unknown(f"key in [{section}]", key, known)
                values[(section, key)] = (value, False)
    prefix = "RTMPQ_"
    for name, value in (os.environ if env is None else env).items():
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):].lower()
        section = next((s for s in sections if rest.startswith(s + "_")), None)
        if section is None:
            continue  # RTMPQ_PUREPYTHON and friends belong to other parts
        key = rest[len(section) + 1:]
        known = _keys(sections[section])
        if key not in known or (section, key) in _INTERNAL:
            raise _unknown("environment variable", name, [f"RTMPQ_{section.upper()}_{k.upper()}" for k in known])
        values[(section, key)] = (value, True)
    for (section, key), value in (overrides or {}).items():
        if value is not None:
            values[(section, key)] = (value, False)
    for (section, key), (value, from_text) in values.items():
        kind = _keys(sections[section])[key]
        setattr(getattr(config, section), key, _coerce(f"{section}.{key}", kind, value, from_text=from_text))
    validate(config)
    return config


def _url_of(text: str, schemes: tuple[str, ...]) -> bool:
    """Whether ``text`` is a URL of one of ``schemes`` with a host (and a port, if any, that is one)."""
    try:
        url = urlsplit(text)
        return url.scheme in schemes and bool(url.hostname) and (url.port or 1) > 0
    except ValueError:  # a port that is not a number
        return False


def _redacted_secret(config: Config) -> str | None:
    """The name of a secret-valued setting that holds show's placeholder instead of a secret."""
    for section, key in sorted(SECRET_KEYS):
        if getattr(getattr(config, section), key) == REDACTED:
            return f"{section}.{key}"
    if any(re.fullmatch(re.escape(REDACTED) + r"[0-9]*", k) for k in config.publish.keys):
        return "publish.keys (a stream key)"
    if config.directory.url and _password(config.directory.url) == REDACTED:
        return "directory.url (its password)"
    return None


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def validate(config: Config) -> None:
    redacted = _redacted_secret(config)
    if redacted is not None:  # (the placeholder was taken as the secret: every key, token or login failed)
        raise ConfigError(f"{redacted}: is {REDACTED!r}, the placeholder `rtmpq config show` prints in place of "
                          "a secret, not the secret: put the real value in the file or environment")
    for where, port in (("rtmp.port", config.rtmp.port), ("moq.port", config.moq.port),
                        ("http.port", config.http.port), ("rtmp.tls_port", config.rtmp.tls_port)):
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"{where}: {port} is not a port number")
    for name in ("backend",):
        for section in (config.moq, config.upstream):
            if getattr(section, name) not in ("aioquic", "aiopquic"):
                raise ConfigError(f"{'moq' if section is config.moq else 'upstream'}.backend: "
                                  f"expected aioquic or aiopquic (got {getattr(section, name)!r})")
    if config.upstream.fingerprint and config.upstream.backend != "aioquic":
        from .moq.transport import FINGERPRINT_NEEDS_AIOQUIC

        raise ConfigError(f"upstream.fingerprint: {FINGERPRINT_NEEDS_AIOQUIC}")
    for key, name in config.publish.keys.items():
        # "." and ".." as a part: players resolve them away (/live/../index.m3u8 is /index.m3u8)
        if not key or not _PUBLIC_NAME.fullmatch(name) or {".", ".."} & set(name.split("/")):
            raise ConfigError(f"publish.keys: {name!r} is not a public name ('name' or 'app/name', "
                              "letters, digits and _.~-)")
    for key in ("hook_url", "events_url"):
        url = getattr(config.publish, key)
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"publish.{key}: expected an http:// or https:// URL")
    if not 0 < config.publish.hook_timeout < config.rtmp.limits.handshake_timeout:
        # the RTMP layer closes a connection whose publish is not answered within its handshake timeout
        raise ConfigError(f"publish.hook_timeout: must be positive and below the RTMP handshake timeout "
                          f"({config.rtmp.limits.handshake_timeout:g} s)")
    for where, value in (("publish.idle_timeout", config.publish.idle_timeout),
                         ("publish.grace_period", config.publish.grace_period),
                         ("upstream.wait", config.upstream.wait),
                         ("publish.events_retries", config.publish.events_retries),
                         ("node.stop_timeout", config.node.stop_timeout),
                         ("rtmp.read_coalesce", config.rtmp.read_coalesce),
                         ("rtmp.max_pending_media_bytes", config.rtmp.max_pending_media_bytes),
                         ("rtmp.max_refused_publishes", config.rtmp.max_refused_publishes)):
        if value < 0:
            raise ConfigError(f"{where}: must not be negative")
    try:
        # without a ladder `rtmpq transcode` makes the default one (and `up` none): its rungs may be tuned
        rungs = [r.name for r in parse_ladder(config.transcode.ladder or DEFAULT_LADDER, config.transcode.bitrates)]
    except LadderError as exc:
        raise ConfigError(str(exc)) from None
    for rung, preset in config.transcode.presets.items():
        if rung not in rungs:
            raise ConfigError(f"transcode.presets: {rung} is not in the ladder ({','.join(rungs)})")
        if preset not in X264_PRESETS:
            raise ConfigError(f"transcode.presets: {rung} = {preset!r} is not a libx264 preset "
                              f"({', '.join(X264_PRESETS)})")
    if config.transcode.preset not in X264_PRESETS:
        raise ConfigError(f"transcode.preset: {config.transcode.preset!r} is not a libx264 preset "
                          f"({', '.join(X264_PRESETS)})")
    for key in ("max_group_bytes", "reader_max_buffered_bytes"):
        if getattr(config.publish, key) <= 0:
            raise ConfigError(f"publish.{key}: must be positive")
    if config.transcode.idle_stop < 0:
        raise ConfigError("transcode.idle_stop: must not be negative")
    if not 0 < config.transcode.restart_min <= config.transcode.restart_max < math.inf:
        raise ConfigError("transcode.restart_min, transcode.restart_max: must be positive seconds, min <= max")
    for key in ("rung_queue_frames", "decode_queue_frames"):
        if getattr(config.transcode, key) < 1:
            raise ConfigError(f"transcode.{key}: must be at least 1")
    for key in ("handshake_timeout", "max_connections", "max_connections_per_ip", "partial_object_timeout",
                "max_partial_bytes", "group_cache_max_bytes", "group_cache_max_groups", "send_budget",
                "max_fetch_bytes", "session_max_requests", "session_max_streams", "session_max_held_bytes"):
        if getattr(config.moq, key) <= 0:
            raise ConfigError(f"moq.{key}: must be positive")
    if config.moq.session_max_stream_buffer < MAX_OBJECT_SIZE:  # the largest object must fit
        raise ConfigError(f"moq.session_max_stream_buffer: must be at least {MAX_OBJECT_SIZE} "
                          f"(the largest object taken, 16 MiB)")
    for key in ("group_cache_max_age", "delivery_timeout"):
        if not 0 < getattr(config.moq, key) < math.inf:  # (NaN fails too)
            raise ConfigError(f"moq.{key}: must be a positive number of seconds (got {getattr(config.moq, key)!r})")
    if not 0 <= config.moq.upstream_wait < math.inf:  # (NaN fails too)
        raise ConfigError(f"moq.upstream_wait: must be a number of seconds, 0 or more (got {config.moq.upstream_wait!r})")
    if config.moq.max_waiting_subscribes < 0:
        raise ConfigError("moq.max_waiting_subscribes: must not be negative")
    if not 0 < config.upstream.refused_reconnect_max < math.inf:
        raise ConfigError(f"upstream.refused_reconnect_max: must be a positive number of seconds "
                          f"(got {config.upstream.refused_reconnect_max!r})")
    if not MOQ_MIN_IDLE_TIMEOUT <= config.moq.idle_timeout < math.inf:  # (NaN fails too)
        raise ConfigError(f"moq.idle_timeout: must be a number of seconds, at least {MOQ_MIN_IDLE_TIMEOUT:g} "
                          f"(got {config.moq.idle_timeout!r})")
    for key in ("max_connections", "max_connections_per_ip", "record_max_queued_bytes"):
        if getattr(config.rtmp, key) <= 0:
            raise ConfigError(f"rtmp.{key}: must be positive")
    h = config.http
    for key in ("max_connections", "max_connections_per_ip", "max_header_bytes", "max_request_bytes",
                "write_buffer_bytes", "max_concurrent_streams", "max_stream_resets", "max_control_frames",
                "request_timeout", "write_timeout",
                "rendition_idle", "max_viewers_tracked", "max_pending_broadcasts", "rung_gap_after"):
        if getattr(h, key) <= 0:
            raise ConfigError(f"http.{key}: must be positive")
    if h.audio_gap_fill < 0:
        raise ConfigError("http.audio_gap_fill: must not be negative (0: no silence is filled)")
    if h.part_target < MIN_PART_TARGET:
        raise ConfigError(f"http.part_target: must be at least {MIN_PART_TARGET} s")
    if h.target_duration < 0:
        raise ConfigError("http.target_duration: must be 0 (from the first segment) or a whole number of seconds")
    if (config.rtmp.tls_cert is None) != (config.rtmp.tls_key is None):
        raise ConfigError("rtmp.tls_cert and rtmp.tls_key go together (--rtmps-cert and --rtmps-key)")
    if not 0 <= config.rtmp.reconnect_wait < math.inf:  # (NaN fails too)
        raise ConfigError(f"rtmp.reconnect_wait: must be a number of seconds, 0 or more "
                          f"(got {config.rtmp.reconnect_wait!r})")
    if config.rtmp.reconnect_url:
        if not _url_of(config.rtmp.reconnect_url, ("rtmp", "rtmps")):
            raise ConfigError(f"rtmp.reconnect_url: expected rtmp://HOST[:PORT][/APP] or rtmps://... "
                              f"(got {config.rtmp.reconnect_url!r})")
    if config.upstream.url and not _url_of(config.upstream.url, ("moqt", "moq")):  # (was: the node
        # started its listeners, then stopped on the URL)
        raise ConfigError(f"upstream.url (--upstream): expected moqt://HOST:PORT (got {config.upstream.url!r})")
    if config.rtmp.tls_handshake_timeout <= 0:
        raise ConfigError("rtmp.tls_handshake_timeout: must be positive")
    for key in ("refused_publish_window", "refused_publish_cooldown"):
        if not 0 < getattr(config.rtmp, key) < math.inf:  # (NaN fails too)
            raise ConfigError(f"rtmp.{key}: must be a positive number of seconds")
    if (h.certfile is None) != (h.keyfile is None):
        raise ConfigError("http.certfile and http.keyfile go together (--http-cert and --http-key)")
    if (config.moq.certfile is None) != (config.moq.keyfile is None):  # one alone was silently self-signed
        raise ConfigError("moq.certfile and moq.keyfile go together (--cert and --key)")
    d = config.directory
    if d.url and not d.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"directory.url: expected redis://HOST:PORT (got {d.url!r})")
    if d.ttl <= 0:
        raise ConfigError("directory.ttl: must be positive")
    if d.max_entries <= 0:
        raise ConfigError("directory.max_entries: must be positive")
    if d.advertise and not d.advertise.startswith("moqt://"):
        raise ConfigError(f"directory.advertise: expected moqt://HOST:PORT (got {d.advertise!r})")
    if config.auth.require_playback_token and not config.auth.secret:
        raise ConfigError("auth.require_playback_token needs auth.secret")
    if config.auth.playback_session <= 0:
        raise ConfigError("auth.playback_session: must be positive")
    if config.auth.node_token:  # (was taken, and every publish upstream refused: "token refused: malformed")
        from .auth.tokens import TokenError, check_token_shape

        try:
            check_token_shape(config.auth.node_token)
        except TokenError as exc:  # (its message never holds the token)
            raise ConfigError(f"auth.node_token (RTMPQ_AUTH_NODE_TOKEN): {exc}; mint one with "
                              "`rtmpq token --act relay --secret <the upstream's [auth] secret>`") from None


# Settings a running node takes from its config file again on SIGHUP (`reload_settings`): the
# stream keys and the token settings, which an operator changes while streams are live (a new
# streamer, a revoked key, a rotated secret). Every other setting is read once, at start.
RELOADABLE = {("publish", "keys"), ("publish", "hook_url"), ("publish", "hook_timeout"), ("publish", "events_url"),
              ("publish", "events_retries"), ("publish", "hook_cafile"), ("auth", "secret"),
              ("auth", "require_playback_token"), ("auth", "playback_session"), ("auth", "node_token")}


def changed_settings(old: Config, new: Config) -> list[tuple[str, str]]:
    """The (section, key) pairs whose values differ between ``old`` and ``new``."""
    out = []
    for section in _sections():
        a, b = getattr(old, section), getattr(new, section)
        out += [(section, key) for key in _keys(type(a))
                if (section, key) not in _INTERNAL and getattr(a, key) != getattr(b, key)]
    return out


def reload_settings(config: Config, new: Config) -> tuple[list[str], list[str]]:
    """Take the RELOADABLE settings of ``new`` into ``config`` in place (every holder of its
    sections sees them at once); returns the names of those changed and of the changed settings
    that wait for a restart. ConfigError, and nothing taken, if the change would open a closed
    node or close an open one: whether a stream key is its public name is fixed at start."""
    changed = changed_settings(config, new)
    if (config.publish.restricted or config.auth.enabled) != (new.publish.restricted or new.auth.enabled):
        raise ConfigError("[publish.keys], hook_url and [auth] secret cannot go from none to some, or from some "
                          "to none, without a restart (on an open node a stream key is its public name)")
    taken = [c for c in changed if c in RELOADABLE]
    for section, key in taken:
        setattr(getattr(config, section), key, getattr(getattr(new, section), key))
    return [".".join(c) for c in taken], [".".join(c) for c in changed if c not in RELOADABLE]


def section_environment(config: Config, section: str, skip=()) -> dict[str, str]:
    """The settings of one section as the environment variables ``load_config`` reads back (a child
    process started with them has the same settings; None is left out, the default)."""
    out = {}
    obj = getattr(config, section)
    for key in _keys(type(obj)):
        value = getattr(obj, key)
        if key in skip or (section, key) in _INTERNAL or value is None:
            continue
        if isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, bool):
            value = "true" if value else "false"
        out[f"RTMPQ_{section.upper()}_{key.upper()}"] = str(value)
    return out


def show(config: Config) -> str:
    """The configuration as TOML, secrets masked (``rtmpq config show``)."""
    lines: list[str] = []
    for section in _sections():
        obj = getattr(config, section)
        lines.append(f"[{section}]")
        tables = []
        for key in _keys(type(obj)):
            if (section, key) in _INTERNAL:
                continue
            value = getattr(obj, key)
            if isinstance(value, dict):
                tables.append((key, value))
                continue
            if value is None:
                lines.append(f"# {key} is not set")
                continue
            if (section, key) in SECRET_KEYS and value:
                value = REDACTED
            elif (section, key) == ("directory", "url"):
                value = safe_url(value)
            lines.append(f"{key} = {_toml_value(value)}")
        for key, table in tables:
            lines.append(f"[{section}.{key}]")
            if (section, key) == ("publish", "keys"):  # the stream keys are secrets, their names are not
                for i, name in enumerate(table.values()):
                    lines.append(f'"{REDACTED}{i}" = {_toml_value(name)}')
            else:  # [transcode.bitrates], [transcode.presets]: by rung
                lines.extend(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    return "\n".join(lines)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
