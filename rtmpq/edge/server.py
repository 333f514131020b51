"""The edge's HTTP server: LL-HLS playlists, init segments, parts and segments, a player page.

    /live/<key>/index.m3u8        multivariant playlist (a variant per video track, one audio rendition)
    /live/<key>/video.m3u8        media playlists (?_HLS_msn=N&_HLS_part=P blocks until it exists);
    /live/<key>/audio.m3u8          audio and video segments line up: both follow the source GoPs;
    /live/<key>/video-1.m3u8        E-RTMP video track 1 (a rendition) and so on
    /live/<key>/v-init-N.mp4      CMAF init segment version N (a- for audio, v1- for video-1); a new
                                  avcC/ASC mid-broadcast makes a new version (v-init.mp4: the newest)
    /live/<key>/v-segN.m4s        segment N; v-segN.P.m4s: part P of it (the hinted part blocks)
    /live/<key>/                  a player page (hls.js)

A broadcast is opened on demand, on the first request that names it, from ``open_broadcast``
(an async iterator of Catalog / Frame items, e.g. an in-process broadcast or a MoQ subscription),
and dropped ``IDLE_SECONDS`` after its last request once it has ended.
"""

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from ..auth.access import Access, AccessDenied

from ..media.catalog import Catalog
from ..media.frames import Frame
from ..redact import safe_name
from ..media.frames import AUDIO, VIDEO
from .llhls import LlHlsStream, multivariant_playlist

log = logging.getLogger("rtmpq.edge")

# Longest a request line + headers may be, and how long a client may take to send them.
MAX_REQUEST_HEAD = 8192
REQUEST_TIMEOUT = 10.0
# Blocking playlist/part requests wait at most this many target durations (the spec suggests 3).
BLOCKING_TARGET_DURATIONS = 3
# An ended or unwatched broadcast is forgotten after this many seconds without requests.
IDLE_SECONDS = 60.0
# Open connections the server accepts at once.
MAX_HTTP_CONNECTIONS = 1024
# An ended broadcast's playlists (with ENDLIST) are served this long after the end, so players
# fetch its last segments; a request after that opens the name afresh (a new publish).
ENDED_PLAYLIST_KEEP = 10.0

_PATH = re.compile(r"^/(?P<app>[A-Za-z0-9_.~-]{1,64})/(?P<key>[A-Za-z0-9_.~-]{1,128})/(?P<file>[A-Za-z0-9_.-]*)$")
# video tracks: "video", E-RTMP "video-1", transcoder rungs "video-480p", "video-1-480p"
_SEGMENT = re.compile(r"^(?P<kind>v(?:\d{1,3})?(?:-?\d{3,4}p)?|a)-seg(?P<msn>\d{1,9})(?:\.(?P<part>\d{1,5}))?\.m4s$")
_PLAYLIST = re.compile(r"^(?P<track>video(?:-\d{1,3})?(?:-\d{3,4}p)?|audio)\.m3u8$")
_INIT = re.compile(r"^(?P<kind>v(?:\d{1,3})?(?:-?\d{3,4}p)?|a)-init(?:-(?P<version>\d{1,9}))?\.mp4$")
# An alternate rendition (a transcoder rung) is pulled from the source only while players ask for
# it: this many seconds after its last request, the edge lets it go (and the rung may stop).
RENDITION_IDLE_SECONDS = 15.0


def stream_key(track: str) -> str:
    """Prefix of a track's files: ``v`` for video, ``v1`` for video-1, ``v480p`` for video-480p,
    ``v1-480p`` for video-1-480p, ``a`` for audio."""
    return "a" if track == AUDIO else "v" + track[len(VIDEO) + 1:]

PLAYER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>rtmpq live</title>
<style>body{margin:0;background:#111;color:#eee;font:14px sans-serif}video{width:100%;max-height:90vh}</style>
</head><body>
<video id="video" controls autoplay muted playsinline></video>
<div id="status">loading…</div>
<script src="/hls.min.js"></script>
<script>
const video = document.getElementById("video"), status = document.getElementById("status");
if (!window.Hls) { status.textContent = "hls.js is not installed on this server (make hlsjs)"; }
else if (Hls.isSupported()) {
  // sit two parts (2 x 0.3 s) behind the live edge, not the playlist's PART-HOLD-BACK (3 parts),
  // and catch up at up to 1.5x after a stall
  const hls = new Hls({lowLatencyMode: true, liveSyncDuration: 0.5, liveMaxLatencyDuration: 0.9, liveSyncOnStallIncrease: 0.1, maxLiveSyncPlaybackRate: 1.5});
  window.rtmpqHls = hls;
  window.rtmpqErrors = [];
  hls.on(Hls.Events.ERROR, (event, data) => window.rtmpqErrors.push(data.details + (data.fatal ? " (fatal)" : "")));
  hls.loadSource("index.m3u8" + location.search);  // carries ?token= when there is one
  hls.attachMedia(video);
  setInterval(() => { window.rtmpqLatency = hls.latency; status.textContent = "latency " + (hls.latency || 0).toFixed(2) + " s"; }, 500);
} else { video.src = "index.m3u8"; }
</script></body></html>
"""


class _Broadcast:
    def __init__(self, name: str) -> None:
        self.name = name
        self.streams = {"v": LlHlsStream(tracks={VIDEO}, prefix="v-"), "a": LlHlsStream(tracks={AUDIO}, prefix="a-")}
        self.changed = asyncio.Condition()
        self.last_request = time.monotonic()
        self.ended_at: float | None = None
        self.task: asyncio.Task | None = None
        self.source = None
        self.catalog: Catalog | None = None
        self.wanted: dict[str, float] = {}  # alternate renditions pulled for players -> last request
        self.group_origin: int | None = None  # the first group id seen (see LlHlsStream.group_origin)

    def asked_for(self, stream: LlHlsStream) -> None:
        """A player asked for ``stream``: an alternate rendition is pulled from now on."""
        want = getattr(self.source, "want", None)
        track = stream.only and next(iter(stream.only))
        if want is None or not track or self.catalog is None or not self.catalog.is_rung(track):
            return
        if track not in self.wanted:
            want(track, True)
        self.wanted[track] = time.monotonic()

    def idle_renditions(self, now: float) -> None:
        for track, last in list(self.wanted.items()):
            if now - last > RENDITION_IDLE_SECONDS:
                del self.wanted[track]
                self.source.want(track, False)

    def listed(self, key: str, stream: LlHlsStream) -> bool:
        """Whether the multivariant waits for ``stream`` to be playable (alternates not pulled yet
        are listed from the catalog alone)."""
        track = stream.only and next(iter(stream.only))
        return key == "v" or key == "a" or self.catalog is None or not self.catalog.is_rung(track) \
            or track in self.wanted


class EdgeServer:
    def __init__(self, open_broadcast: Callable[[str], AsyncIterator | None], *, host: str = "0.0.0.0",
                 port: int = 8080, static_dir: Path | None = None, access: Access | None = None) -> None:
        self.open_broadcast = open_broadcast
        self.access = access or Access()
        self.host = host
        self.port = port
        self.static_dir = static_dir
        self._broadcasts: dict[str, _Broadcast] = {}
        self._server: asyncio.AbstractServer | None = None
        self._connections = 0
        self._reaper: asyncio.Task | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self._reaper = asyncio.get_running_loop().create_task(self._reap())
        log.info("LL-HLS on http://%s:%d/live/<key>/index.m3u8", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        return self._server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for b in self._broadcasts.values():
            if b.task is not None:
                b.task.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(5)
            now = time.monotonic()
            for name, b in list(self._broadcasts.items()):
                if b.streams["v"].ended and now - b.last_request > IDLE_SECONDS:
                    del self._broadcasts[name]
                else:
                    b.idle_renditions(now)

    # -- broadcasts -----------------------------------------------------------------------------
    def _broadcast(self, name: str) -> _Broadcast | None:
        b = self._broadcasts.get(name)
        now = time.monotonic()
        if b is not None and not (b.ended_at is not None and now - b.ended_at > ENDED_PLAYLIST_KEEP):
            b.last_request = now
            return b
        source = self.open_broadcast(name)
        if source is None:
            return None
        b = self._broadcasts[name] = _Broadcast(name)
        b.source = source
        b.task = asyncio.get_running_loop().create_task(self._feed(b, source))
        log.info("edge: packaging %s", safe_name(name))
        return b

    async def _feed(self, b: _Broadcast, source: AsyncIterator) -> None:
        streams = list(b.streams.values())
        try:
            async for item in source:
                if isinstance(item, Catalog):
                    b.catalog = item
                    for info in item.tracks:  # another video track: another variant
                        key = stream_key(info.name) if info.kind == VIDEO and _PLAYLIST.match(f"{info.name}.m3u8") else None
                        if key is not None and key not in b.streams:
                            b.streams[key] = LlHlsStream(tracks={info.name}, prefix=f"{key}-")
                            b.streams[key].group_origin = b.group_origin
                            streams.append(b.streams[key])
                    for stream in streams:
                        stream.set_catalog(item)
                elif isinstance(item, Frame):
                    if b.group_origin is None:  # segment numbers of every rendition count from here
                        b.group_origin = item.group
                        for stream in streams:
                            stream.group_origin = item.group
                    for stream in streams:
                        stream.push(item)
                else:
                    continue
                async with b.changed:
                    b.changed.notify_all()
        except Exception as exc:  # the source failed: end the playlist rather than hang players
            log.warning("edge: %s source failed: %s", safe_name(b.name), exc)
        finally:
            for stream in streams:
                stream.end()
            b.ended_at = time.monotonic()
            async with b.changed:
                b.changed.notify_all()

    async def _wait_for(self, b: _Broadcast, stream: LlHlsStream, ready: Callable[[], bool]) -> bool:
        timeout = BLOCKING_TARGET_DURATIONS * stream.target_duration()
        async with b.changed:
            try:
                await asyncio.wait_for(b.changed.wait_for(lambda: ready() or stream.ended), timeout)
            except TimeoutError:
                return False
        return ready()

    # -- HTTP -----------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._connections >= MAX_HTTP_CONNECTIONS:
            writer.close()
            return
        self._connections += 1
        try:
            while True:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                    return
                if len(head) > MAX_REQUEST_HEAD:
                    await self._send(writer, 431, b"request head too large\n", "text/plain", keep_alive=False)
                    return
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split(" ")
                if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                    await self._send(writer, 400, b"bad request line\n", "text/plain", keep_alive=False)
                    return
                method, target, version = parts
                headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
                keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
                if method not in ("GET", "HEAD"):
                    await self._send(writer, 405, b"only GET and HEAD\n", "text/plain", keep_alive=keep_alive)
                else:
                    status, body, ctype, cache = await self._route(target)
                    await self._send(writer, status, body, ctype, cache=cache, keep_alive=keep_alive,
                                     head_only=method == "HEAD")
                if not keep_alive:
                    return
        finally:
            self._connections -= 1
            writer.close()

    async def _send(self, writer, status: int, body: bytes, ctype: str, *, cache: str = "no-store",
                    keep_alive: bool = True, head_only: bool = False) -> None:
        reason = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
                  431: "Request Header Fields Too Large", 503: "Service Unavailable"}.get(status, "OK")
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Cache-Control: {cache}\r\nAccess-Control-Allow-Origin: *\r\n"
                f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
        writer.write(head.encode() + (b"" if head_only else body))
        await writer.drain()

    async def _route(self, target: str) -> tuple[int, bytes, str, str]:
        url = urlsplit(target)
        if url.path in ("/hls.min.js", "/hls.js"):
            path = self.static_dir / "hls.min.js" if self.static_dir else None
            if path is None or not path.exists():
                return 404, b"hls.js is not installed (run: make hlsjs)\n", "text/plain", "no-store"
            return 200, path.read_bytes(), "application/javascript", "max-age=86400"
        m = _PATH.match(url.path)
        if m is None:
            return 404, b"not found: expected /<app>/<key>/index.m3u8\n", "text/plain", "no-store"
        name = f"{m['app']}/{m['key']}"
        file = m["file"]
        page = file in ("", "index.html")
        token = parse_qs(url.query).get("token", [None])[0]
        try:
            self.access.may_subscribe(name, token, time.time())
        except AccessDenied as exc:
            if page:  # the page holds no media; the requests it makes carry the token
                return 200, PLAYER_PAGE.encode(), "text/html; charset=utf-8", "no-cache"
            return 403, f"{exc}\n".encode(), "text/plain", "no-store"
        query = f"?token={quote(token, safe='')}" if token else ""
        b = self._broadcast(name)  # the page opens the broadcast too: its playlist is ready sooner
        if b is None:
            return 404, b"no such broadcast\n", "text/plain", "no-store"
        if page:
            return 200, PLAYER_PAGE.encode(), "text/html; charset=utf-8", "no-cache"
        video, audio = b.streams["v"], b.streams["a"]
        if file == "index.m3u8":
            # every rendition the catalog has must be playable before players are pointed at them
            streams = [s for k, s in b.streams.items() if b.listed(k, s)]
            ready = lambda: all(s.playable for s in streams if s.has_media) and any(s.has_media for s in streams)  # noqa: E731
            if not await self._wait_for(b, video, ready):
                return 503, b"the broadcast has no media yet\n", "text/plain", "no-store"
            videos = [(s, f"{s.track_names[0]}.m3u8") for k, s in b.streams.items() if k != "a" and s.has_media]
            return 200, multivariant_playlist(videos, audio, "audio.m3u8", query).encode(), \
                "application/vnd.apple.mpegurl", "no-cache"
        pm, im = _PLAYLIST.match(file), _INIT.match(file)
        if pm is not None or im is not None:
            stream = b.streams.get(stream_key(pm["track"]) if pm is not None else im["kind"])
            if stream is None:
                return 404, b"no such rendition\n", "text/plain", "no-store"
            b.asked_for(stream)
            if not await self._wait_for(b, stream, lambda: stream.playable):
                return 503, b"this rendition has no media yet\n", "text/plain", "no-store"
            if im is None:
                return await self._media_playlist(b, stream, url.query, query)
            ctype = "audio/mp4" if stream is audio else "video/mp4"
            if im["version"] is None:  # the newest: its content changes with the next avcC
                return 200, stream.init, ctype, "no-cache"
            data = stream.init_version_data(int(im["version"]))
            if data is None:
                return 404, b"no such init segment\n", "text/plain", "no-store"
            return 200, data, ctype, "max-age=60"  # a version's bytes never change
        sm = _SEGMENT.match(file)
        stream = b.streams.get(sm["kind"]) if sm is not None else None
        if stream is None:
            return 404, b"not found\n", "text/plain", "no-store"
        b.asked_for(stream)
        ctype = "audio/mp4" if stream is audio else "video/mp4"
        msn = int(sm["msn"])
        part = int(sm["part"]) if sm["part"] is not None else None
        if not stream.has(msn, part):
            # only the hinted next part, or the segment in progress, may be waited for
            last = stream.segments[-1] if stream.segments else None
            in_progress = last is not None and not last.complete and last.msn == msn
            if not ((part is not None and (msn, part) == stream.next_part) or (part is None and in_progress)):
                return 404, b"no such segment\n", "text/plain", "no-store"
            if not await self._wait_for(b, stream, lambda: stream.has(msn, part)):
                return 503, b"the requested part did not appear in time\n", "text/plain", "no-store"
        segment = stream.segment(msn)
        if segment is None:
            return 404, b"segment no longer available\n", "text/plain", "no-store"
        if part is None:
            return 200, segment.data(), ctype, "max-age=60"
        if part >= len(segment.parts):
            return 404, b"no such part\n", "text/plain", "no-store"
        return 200, segment.parts[part].data, ctype, "max-age=60"

    async def _media_playlist(self, b: _Broadcast, stream: LlHlsStream, query_text: str, uri_query: str):
        query = parse_qs(query_text)
        try:
            msn = int(query["_HLS_msn"][0]) if "_HLS_msn" in query else None
            part = int(query["_HLS_part"][0]) if "_HLS_part" in query else None
        except ValueError:
            return 400, b"_HLS_msn and _HLS_part must be integers\n", "text/plain", "no-store"
        if part is not None and msn is None:
            return 400, b"_HLS_part needs _HLS_msn\n", "text/plain", "no-store"
        if msn is not None:
            newest = stream.segments[-1].msn if stream.segments else 0
            if msn > newest + 2:
                return 400, b"_HLS_msn is too far in the future\n", "text/plain", "no-store"
            if not await self._wait_for(b, stream, lambda: stream.has(msn, part)):
                return 503, b"the requested part did not appear in time\n", "text/plain", "no-store"
        return 200, stream.media_playlist(uri_query).encode(), "application/vnd.apple.mpegurl", "no-cache"
