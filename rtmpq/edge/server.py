"""The edge's LL-HLS on the node's HTTP listener (rtmpq/http): playlists, init segments, parts
and segments, a player page.

    /live/<key>/index.m3u8        multivariant playlist (a variant per video track, one audio rendition)
    /live/<key>/video.m3u8        media playlists (?_HLS_msn=N&_HLS_part=P blocks until it exists);
    /live/<key>/audio.m3u8          audio and video segments line up: both follow the source GoPs;
    /live/<key>/video-1.m3u8        E-RTMP video track 1 (a rendition) and so on
    /live/<key>/audio-1.m3u8        E-RTMP audio track 1 (another audio rendition) and so on
    /live/<key>/v-init-N.mp4      CMAF init segment version N (a- for audio, v1- for video-1, a1- for
                                  audio-1); a new avcC/ASC mid-broadcast makes a new version
                                  (v-init.mp4: the newest)
    /live/<key>/v-segN.m4s        segment N; v-segN.P.m4s: part P of it (the hinted part blocks)
    /live/<key>/                  a player page (hls.js)

A broadcast is opened on demand, on the first request that names it, from ``open_broadcast``
(an async iterator of Catalog / Frame items, e.g. an in-process broadcast or a MoQ subscription,
and NotLive when its upstream has no such broadcast yet), and dropped ``IDLE_SECONDS`` after its
last request once it has ended.
"""

import asyncio
import logging
import math
import re
import time
from dataclasses import replace
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, quote

from ..auth.access import Access, AccessDenied
from ..config import MAX_VIEWERS_TRACKED, RENDITION_IDLE_SECONDS, HttpConfig, bundled_static_dir
from ..http import Request, Response, text
from ..http.message import path_segments
from ..http.ranges import ACCEPT_RANGES, byte_range
from ..http.server import HttpServer
from ..log_limit import LogLimiter
from ..media.broadcast import GroupSkipped
from ..media.catalog import Catalog, TrackInfo
from ..media.demux import track_id, track_name
from ..media.frames import Frame, NotLive
from ..redact import safe_name
from ..media.frames import AUDIO, VIDEO
from .llhls import PART_TARGET, RUNG_GAP_AFTER, TARGET_DURATION, LlHlsStream, MediaClock, multivariant_playlist, sequence_base
from .silence import AUDIO_GAP_FILL, AudioGapFill

log = logging.getLogger("rtmpq.edge")

# Blocking playlist/part requests wait at most this many target durations (the spec suggests 3).
BLOCKING_TARGET_DURATIONS = 3
# A blocking reload for a part more than this many parts past the last one listed is refused (400)
# at once, not held (RFC 8216bis 6.2.5.2 lets a server refuse a request too far ahead): 3, or as
# many parts as make PART_LIMIT_SECONDS (or a target duration, if longer) when parts are shorter. hls.js with
# lowLatencyMode off asks for the segment after the one in progress at the part index last listed,
# up to a segment of parts ahead: refusing that sent it a 400 on nearly every reload.
PART_LIMIT = 3
PART_LIMIT_SECONDS = 3.0


def part_limit(part_target: float, target_duration: float) -> int:
    """The Part Limit of a playlist with this PART-TARGET and EXT-X-TARGETDURATION (seconds)."""
    return max(PART_LIMIT, math.ceil(max(PART_LIMIT_SECONDS, target_duration) / part_target))

# An ended or unwatched broadcast is forgotten after this many seconds without requests.
IDLE_SECONDS = 60.0
# An ended broadcast's playlists (with ENDLIST) are served this long after the end, so players
# fetch its last segments; a request after that opens the name afresh. A new publish of the name
# replaces it at once (as soon as it has a segment): from then on the ended one is served only to
# its readers (segments and blocking reloads by their numbers; a plain reload from a player that
# read it live and had not seen its end yet), for the rest of this time.
ENDED_PLAYLIST_KEEP = 10.0
# The player page, its broadcast ended, asks whether the name is live again with
# index.m3u8?next=1: the edge holds that request up to this many target durations until a new
# publish of the name has a segment, so the page starts on it at once, with one request per hold.
NEXT_PUBLISH_HOLD_TARGET_DURATIONS = 3
# Players are told apart by address and user agent, and counted as viewers of a broadcast for
# this long after their last request (seconds); at most MAX_VIEWERS_TRACKED ([http]
# max_viewers_tracked, rtmpq/config.py) are tracked per broadcast.
VIEWER_WINDOW = 10.0

# an app of one or two parts (rtmpq/rtmp/session.py APP_NAME_PATTERN: rtmp://HOST/live/studio/cam)
_PATH = re.compile(r"^/(?P<app>[A-Za-z0-9_.~-]{1,64}(?:/[A-Za-z0-9_.~-]{1,64})?)/(?P<key>[A-Za-z0-9_.~-]{1,128})"
                   r"/(?P<file>[A-Za-z0-9_.-]*)$")
_PAGE_NO_SLASH = re.compile(r"^/[A-Za-z0-9_.~-]{1,64}/[A-Za-z0-9_.~-]{1,128}$")
# What the paths above take as a name: the names a publisher can have (rtmpq/rtmp/session.py,
# rtmpq/auth/access.py), percent-encoded or not (RFC 3986: %7E is ~).
_LEGAL_NAME = "(a broadcast name is app/name or app/sub/name, each of letters, digits and _.~-, neither '.' nor '..')"
# video tracks: "video", E-RTMP "video-1", transcoder rungs "video-480p", "video-1-480p"
_SEGMENT = re.compile(r"^(?P<kind>v(?:\d{1,3})?(?:-?\d{3,4}p)?|a(?:\d{1,3})?)-seg(?P<msn>\d{1,12})(?:\.(?P<part>\d{1,5}))?\.m4s$")
# audio tracks: "audio", E-RTMP "audio-1"
_PLAYLIST = re.compile(r"^(?P<track>video(?:-\d{1,3})?(?:-\d{3,4}p)?|audio(?:-\d{1,3})?)\.m3u8$")
_INIT = re.compile(r"^(?P<kind>v(?:\d{1,3})?(?:-?\d{3,4}p)?|a(?:\d{1,3})?)-init(?:-(?P<version>\d{1,12}))?\.mp4$")
# An alternate rendition (a transcoder rung) is pulled from the source only while players ask for
# it: RENDITION_IDLE_SECONDS ([http] rendition_idle, rtmpq/config.py) after its last request, the
# edge lets it go (and the rung may stop).
# A rung's playlist is first served once the rung is this close (seconds of media) to its source:
# a rung asked for mid-group starts at that group's IDR and decodes its way up to the live edge,
# and hls.js places a level it switches to at the old level's playhead, so a player given the
# playlist sooner stood past the rung's edge and played on at it with no buffer (stalls).
RUNG_LIVE_LAG = 0.3
# ... or once this many seconds have passed since it was pulled: a rung that cannot keep up (a
# starved host) is served as live as it gets rather than refused.
RUNG_CATCH_UP_WAIT = 5.0
# A rendition's playlist or init segment asked for within this many seconds of the edge opening its
# broadcast (a direct link to a rung) waits up to then for a catalog that lists it, instead of 404:
# the source's catalog comes first, and a transcoder lists its rungs in one of its own right after.
RENDITION_LISTING_WAIT = 3.0
PLAYLIST = "application/vnd.apple.mpegurl"
# The answer (404) for a name nothing publishes: `rtmpq up` at once (its registry does not have it);
# a separate edge as soon as its upstream says it does not have it (a NotLive from its feed), the
# feed waiting for it on (a player asking again plays once it is live).
NO_SUCH_BROADCAST = "no such broadcast"
# _broadcast's answer when [http] max_pending_broadcasts are waited for and none may be let go
TOO_MANY_PENDING = object()
# A playlist answer that says the broadcast is live but its publisher's codecs are not carried
# (``audio=MP3``): the player page shows that answer's text instead of "not live (yet)".
NOT_CARRIED_HEADER = "Rtmpq-Not-Carried"
# A refused viewer (403: no token, an expired or wrong one) is logged once per client address and
# broadcast per this many seconds (a refused player retries every few seconds; the operator needs
# the reason once), remembering at most this many pairs (the oldest forgotten first).
REFUSAL_LOG_INTERVAL = 60.0
MAX_REFUSALS_REMEMBERED = 1024
# Browsers keep an answer to a CORS preflight (OPTIONS) this many seconds (Chromium: 2 h at most).
PREFLIGHT_MAX_AGE = 600


def stream_key(track: str) -> str:
    """Prefix of a track's files: ``v`` for video, ``v1`` for video-1, ``v480p`` for video-480p,
    ``v1-480p`` for video-1-480p, ``a`` for audio, ``a1`` for audio-1."""
    if track.startswith(AUDIO):
        return "a" + track[len(AUDIO) + 1:]
    return "v" + track[len(VIDEO) + 1:]


def is_audio_key(key: str) -> bool:
    """Whether the stream of prefix ``key`` (stream_key) is an audio playlist."""
    return key.startswith("a")

# The player page plays this many seconds behind the live edge unless asked otherwise
# (/live/<name>/?latency=SECONDS, between the two bounds): below the playlist's PART-HOLD-BACK (3
# parts: 0.6 s with the default PART_TARGET of 0.2 s) for a live latency under 1 s, at the price
# of a stall now and then on a busy machine or link, which a larger value buffers away. Further
# behind than that plus PLAYER_LATENCY_SLACK (after a stall), it seeks back to the edge.
PLAYER_LATENCY = 0.5
PLAYER_LATENCY_BOUNDS = (0.3, 30.0)
PLAYER_LATENCY_SLACK = 0.4
# A player page whose broadcast is not live (not yet, or no longer: the playlist answers 404/503)
# asks again every this many seconds, so it plays by itself once the publisher starts.
PLAYER_RETRY = 2.0
# A player page whose video played and has not moved for this many seconds (not paused: its
# publisher away within its grace period, or a link too slow) says so instead of the latency,
# which hls.js no longer updates then.
PLAYER_STALL = 2.0

PLAYER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>rtmpq live</title>
<style>body{margin:0;background:#111;color:#eee;font:14px sans-serif}video{width:100%;max-height:90vh}</style>
</head><body>
<video id="video" controls autoplay muted playsinline></video>
<div id="status">loading…</div>
<script src="/hls.min.js"></script>
<script>
const video = document.getElementById("video"), status = document.getElementById("status");
if (!window.Hls) { status.textContent = "this node has no hls.js (its log says so at start); players can open index.m3u8"; }
else if (Hls.isSupported()) {
  // PLAYER_LATENCY behind the live edge unless the page is asked for ?latency=SECONDS (see
  // edge/server.py), catching up at up to 1.5x; a stall adds only 0.1 s to the target
  const asked = parseFloat(new URLSearchParams(location.search).get("latency"));
  const latency = asked >= @MIN@ && asked <= @MAX@ ? asked : @LATENCY@;
  let hls = null;
  let source = "index.m3u8" + location.search;  // carries ?token= when there is one
  window.rtmpqErrors = [];
  window.rtmpqRestarts = 0;
  const start = () => {
    // an error answer to the multivariant playlist is fatal at once (hls.js asks again 1 s later
    // by default): this page asks again itself every @RETRY@ s, and says why meanwhile
    hls = new Hls({lowLatencyMode: true, liveSyncDuration: latency, liveMaxLatencyDuration: latency + @SLACK@,
                   liveSyncOnStallIncrease: 0.1, maxLiveSyncPlaybackRate: 1.5,
                   manifestLoadPolicy: {default: {maxTimeToFirstByteMs: Infinity, maxLoadTimeMs: 20000,
                     timeoutRetry: {maxNumRetry: 2, retryDelayMs: 0, maxRetryDelayMs: 0},
                     errorRetry: {maxNumRetry: 0, retryDelayMs: 0, maxRetryDelayMs: 0}}}});
    window.rtmpqHls = hls;
    hls.on(Hls.Events.ERROR, (event, data) => {
      window.rtmpqErrors.push(data.details + (data.fatal ? " (fatal)" : ""));
      // not live yet (404/503: hls.js gives up on a 404 at once), or the edge went away: ask
      // again every @RETRY@ s, so a page opened before the broadcast starts plays when it does
      if (data.fatal && data.response && data.response.code === 403) {
        waiting = "not allowed to watch this broadcast (403: no token, or it expired)";
      } else if (data.fatal) {
        const failed = hls, told = parsed;
        // said at once: a separate edge whose upstream has not answered yet holds a playlist
        // request up to 3 target durations before its 503, so the answer below can come after the
        // restart (was: never said, "latency 0.00 s")
        if (waiting === null || waiting === over || waiting === loading) waiting = notLive;
        // live, but in codecs that are not carried: the edge's answer says which (NOT_CARRIED_HEADER)
        fetch(source).then((r) => r.headers.has("@NOT_CARRIED@") ? r.text() : null, () => null).then((why) => {
          if (told === parsed) waiting = why ? why.trim() + " (trying again every @RETRY@ s…)" : notLive;
        });
        setTimeout(() => { if (failed === hls) { window.rtmpqRestarts += 1; hls.destroy(); start(); } }, @RETRY@ * 1000);
      }
    });
    // a restart (below) reopens with the edge's session token: the page's own may have expired
    hls.on(Hls.Events.MANIFEST_LOADED, (event, data) => {
      const token = data.levels.length && new URL(data.levels[0].url, location.href).searchParams.get("token");
      if (token) source = "index.m3u8?token=" + encodeURIComponent(token);
    });
    // the audio playlist ended while the video goes on (a publisher back without audio, or without
    // the further audio track played): a media element plays only what all its buffers hold, so
    // start over from the multivariant playlist (at the broadcast's end the multivariant still
    // lists the audio: nothing to do)
    hls.on(Hls.Events.AUDIO_TRACK_LOADED, (event, data) => {
      if (data.details.live) return;
      const ended = hls, file = new URL(data.details.url, location.href).pathname.split("/").pop();
      fetch(source).then((r) => r.text()).then((listing) => {
        if (ended === hls && listing.startsWith("#EXTM3U") && !listing.includes('URI="' + file)) {
          window.rtmpqRestarts += 1;
          hls.destroy();
          start();
        }
      }).catch(() => {});
    });
    hls.on(Hls.Events.MANIFEST_PARSED, () => { waiting = null; parsed += 1; });
    // the broadcast ended (ENDLIST): played to its end (hls.js may stall a hair before it rather
    // than end), then the same name published again is a new broadcast: play it
    hls.on(Hls.Events.LEVEL_LOADED, (event, data) => { if (!data.details.live) awaitNext(hls); });
    hls.on(Hls.Events.ERROR, (event, data) => {
      if (ended === hls && data.details === Hls.ErrorDetails.BUFFER_STALLED_ERROR) waiting = over;
    });
    hls.loadSource(source);
    hls.attachMedia(video);
  };
  const loading = "loading…", notLive = "not live (yet): trying again every @RETRY@ s…";
  let waiting = loading;  // why nothing plays, shown instead of the latency (none before a playlist)
  let parsed = 0;  // multivariant playlists read: a late answer about an older failure is not shown
  let ended = null;  // the hls.js instance whose broadcast ended
  const over = "the broadcast has ended; it plays here again when it is back";
  video.addEventListener("ended", () => { waiting = over; });
  // is the name live again? (its multivariant's first media playlist without ENDLIST) The edge
  // holds index.m3u8?next=1 until a new publish of the name has a segment (a few seconds at
  // most), so the page asks again at once after a held answer, and every @RETRY@ s otherwise
  const awaitNext = (which) => {
    if (ended === which) return;
    ended = which;
    let asked = 0;
    const again = () => setTimeout(ask, Math.max(0, asked + @RETRY@ * 1000 - performance.now()));
    const ask = () => {
      if (ended !== hls) return;
      asked = performance.now();
      const base = new URL(source, location.href);
      const held = new URL(base);
      held.searchParams.set("next", "1");
      fetch(held).then((r) => r.ok ? r.text() : "").then((listing) => {
        const uri = listing.split("\\n").find((line) => line && !line.startsWith("#"));
        return uri ? fetch(new URL(uri, base)).then((r) => r.ok ? r.text() : "") : "";
      }).then((media) => {
        if (ended !== hls) return;
        if (!media.startsWith("#EXTM3U") || media.includes("#EXT-X-ENDLIST")) return again();
        window.rtmpqRestarts += 1;
        hls.destroy();
        start();
      }).catch(again);
    };
    again();
  };
  start();
  const stalled = "no new media for @STALL@ s or more: the publisher may be away; it plays on when media comes";
  let shown = -1, still = 0;  // the video's time at the last look, and for how long it has not moved
  setInterval(() => { window.rtmpqLatency = hls.latency;
    still = video.currentTime > 0 && video.currentTime === shown && !video.paused ? still + 0.5 : 0;
    shown = video.currentTime;
    status.textContent = waiting || (still >= @STALL@ ? stalled : "latency " + (hls.latency || 0).toFixed(2) + " s"); }, 500);
} else { video.src = "index.m3u8" + location.search; }  // native HLS (Safari): with ?token= too
</script></body></html>
""".replace("@MIN@", str(PLAYER_LATENCY_BOUNDS[0])).replace("@MAX@", str(PLAYER_LATENCY_BOUNDS[1])) \
    .replace("@SLACK@", str(PLAYER_LATENCY_SLACK)).replace("@LATENCY@", str(PLAYER_LATENCY)) \
    .replace("@RETRY@", str(PLAYER_RETRY)).replace("@STALL@", f"{PLAYER_STALL:g}") \
    .replace("@NOT_CARRIED@", NOT_CARRIED_HEADER)


class _Broadcast:
    def __init__(self, name: str, part_target: float = PART_TARGET, target_duration: int = TARGET_DURATION,
                 audio_gap_fill: float = AUDIO_GAP_FILL, after: int = 0, *,
                 rendition_idle: float = RENDITION_IDLE_SECONDS, max_viewers: int = MAX_VIEWERS_TRACKED,
                 rung_gap_after: float = RUNG_GAP_AFTER) -> None:
        """``after``: the first number past an ended broadcast of the name still served to its
        readers (numbers_end): this one's numbers start there at the earliest. ``rendition_idle``,
        ``max_viewers``, ``rung_gap_after``: [http] rendition_idle, max_viewers_tracked, rung_gap_after."""
        self.name = name
        self.rung_gap_after = rung_gap_after
        self.rendition_idle = rendition_idle
        self.max_viewers = max_viewers
        self.gap_fill = AudioGapFill(audio_gap_fill)  # silence while the audio stops and the video goes on
        self.part_target = part_target
        self.target_duration = target_duration
        self.first = max(sequence_base(time.time()), after)  # every rendition's segments numbered alike
        self.streams = {"v": self.new_stream({VIDEO}, "v-"), "a": self.new_stream({AUDIO}, "a-")}
        self.clock = MediaClock()  # segment dates of every rendition from one anchor
        for stream in self.streams.values():
            stream.clock = self.clock
        self.changed = asyncio.Condition()
        self.last_request = self.opened_at = time.monotonic()
        self.opened = time.time()
        self.viewers: dict[tuple[str, str], float] = {}  # (client address, user agent) -> last request
        self.bytes_out = 0
        # what came from upstream, for an edge node's metrics (rtmpq up reads its registry's)
        self.frames_in, self.bytes_in, self.groups_in, self.newest_group_in = 0, {}, 0, -1
        self.ended_at: float | None = None
        self.task: asyncio.Task | None = None
        self.source = None
        self.catalog: Catalog | None = None
        self.not_live = False  # the source said upstream has no such broadcast, and no catalog came since
        self.wanted: dict[str, float] = {}  # alternate renditions pulled for players -> last request
        self.group_origin: int | None = None  # the first group id seen (see LlHlsStream.group_origin)
        self.rungs_live: set[str] = set()  # rungs that caught up with their source since pulled
        self.pulled_at: dict[str, float] = {}  # rungs pulled for players -> when (time.monotonic())
        self.kept_audio: TrackInfo | None = None  # the audio that left, kept as silence (keep_audio)
        # (viewer, stream prefix) given a live playlist of this broadcast and not yet its end:
        # their plain reloads get its ENDLIST even once a new publish replaced it
        self.reading_live: set[tuple[tuple[str, str], str]] = set()
        self.stand_ins: dict[str, str] = {}  # withdrawn rung -> the source its playlist goes on with (stand_in)

    @property
    def playable(self) -> bool:
        """A rendition has a whole segment: players may be pointed at this broadcast."""
        return any(s.playable for s in self.streams.values())

    @property
    def numbers_end(self) -> int:
        """Past every segment, part and init number this broadcast used, or that a blocking reload
        of it may ask for (the segment after its last)."""
        return max(max(s.next_part[0] + 1, s.init_version + 1) for s in self.streams.values())

    def read_by(self, viewer: tuple[str, str], stream: LlHlsStream) -> None:
        """``viewer`` was given ``stream``'s playlist as it is now."""
        if stream.ended:
            self.reading_live.discard((viewer, stream.prefix))
        elif len(self.reading_live) < self.max_viewers:
            self.reading_live.add((viewer, stream.prefix))

    def keep_audio(self, catalog: Catalog) -> TrackInfo | None:
        """The audio track to keep playing as silence while ``catalog`` has none and still has
        video (a publisher back without audio), else None. Players already on the audio playlist
        would stop at its end (hls.js plays only what every buffer holds, and does not re-read the
        multivariant), so it goes on, silent, with a discontinuity where the video has one;
        players that come now get the multivariant without audio."""
        if catalog.track(AUDIO) is not None or catalog.track(VIDEO) is None:
            self.kept_audio = None
        elif self.kept_audio is None and self.catalog is not None and not self.streams["a"].ended \
                and self.streams["a"].has_media and self.gap_fill.can_fill(self.catalog.track(AUDIO)):
            self.kept_audio = self.catalog.track(AUDIO)
            log.info("edge: %s: the audio left while the video goes on; its HLS audio goes on as silence "
                     "for the players on it", safe_name(self.name))
        return self.kept_audio

    def follow_default_audio(self, catalog: Catalog) -> None:
        """The audio playlist packages the broadcast's default audio track: ``audio`` (E-RTMP
        audio track 0), else, for a publish whose audio has no track 0 (E-RTMP only recommends
        one), the one with the lowest track id (``audio-<id>``). Chosen again while the playlist
        has no part (a track 0 whose sequence header came after another's takes over), kept from
        its first part on."""
        stream = self.streams["a"]
        if stream.ended or stream.last_part is not None:
            return
        ids = [i for t in catalog.tracks if t.kind == AUDIO and (i := track_id(AUDIO, t.name)) is not None]
        stream.only = {track_name(AUDIO, min(ids, default=0))}

    def stand_in(self, track: str, catalog: Catalog) -> str | None:
        """The track whose pictures the playlist of ``track``, a rung ``catalog`` no longer lists,
        goes on with: its source, while ``catalog`` lists that (the transcoder withdrew the rung
        because the source came back no larger than it: a publisher back at a smaller size); else
        None (the playlist ends). Players do not re-read the multivariant: one on a rung's
        playlist that ended stopped though the broadcast went on. Its source at the source's size,
        not upscaled (behind a discontinuity with the source's init), is the best picture there is
        no larger than the rung's, and costs no encoder."""
        source = self.stand_ins.get(track)
        if source is None and self.catalog is not None and self.catalog.is_rung(track):
            source = self.catalog.rung_source(track)
        info = catalog.track(source) if source is not None else None
        return source if info is not None and info.kind == VIDEO else None

    def stand_in_catalog(self, track: str, catalog: Catalog) -> Catalog:
        """``catalog`` for the playlist of ``track`` standing in (stand_in): its source's entry
        under the rung's name."""
        source = self.stand_ins[track]
        return catalog.with_track(replace(catalog.track(source), name=track, source=source, alt_group=None))

    def follow_source(self, streams: list[LlHlsStream], track: str) -> None:
        """After a frame of ``track``: the rungs made from it that are in a gap list its new parts
        (LlHlsStream.follow_source); one it left rung_gap_after behind, while pulled, is in one now."""
        source = self.streams.get(stream_key(track))
        if source is None or source.only != {track}:
            return
        for stream in streams:
            if stream.follows is source:
                rung = next(iter(stream.only))
                if stream.follow_source(self.rung_gap_after if rung in self.wanted else None):
                    log.info("edge: %s: %s has not begun a group its source is %.1f s into; its HLS playlist "
                             "lists it as a gap", safe_name(self.name), rung, self.rung_gap_after)

    def new_stream(self, tracks: set[str], prefix: str) -> LlHlsStream:
        """A media playlist of this broadcast, with its settings (numbered from ``first``)."""
        return LlHlsStream(tracks=tracks, prefix=prefix, part_target=self.part_target, first=self.first,
                           target_duration=self.target_duration)

    def _rung(self, stream: LlHlsStream) -> str | None:
        track = stream.only and next(iter(stream.only))
        return track if track and self.catalog is not None and self.catalog.is_rung(track) else None

    def caught_up(self, stream: LlHlsStream, now: float) -> bool:
        """Whether players may be given ``stream``'s playlist: any stream but a rung at once, a
        rung once it has come within RUNG_LIVE_LAG of its source since it was pulled (or
        RUNG_CATCH_UP_WAIT after that)."""
        track = self._rung(stream)
        if track is None or track in self.rungs_live:
            return True
        source = self.streams.get(stream_key(self.catalog.rung_source(track)))
        if source is None or source.media_time is None or source.ended:
            return True
        behind = stream.media_time is None or source.media_time - stream.media_time > RUNG_LIVE_LAG
        if behind and now - self.pulled_at.setdefault(track, now) < RUNG_CATCH_UP_WAIT:
            return False
        self.rungs_live.add(track)
        return True

    def asked_for(self, stream: LlHlsStream) -> None:
        """A player asked for ``stream``: an alternate rendition is pulled from now on."""
        want = getattr(self.source, "want", None)
        track = self._rung(stream)
        if want is None or track is None:
            return
        if track not in self.wanted:
            want(track, True)
            self.pulled_at[track] = time.monotonic()
        self.wanted[track] = time.monotonic()

    def idle_renditions(self, now: float) -> None:
        for track, last in list(self.wanted.items()):
            if now - last > self.rendition_idle:
                self.let_go(track)

    def let_go(self, track: str) -> None:
        """The alternate rendition ``track`` is pulled no more (nobody asked for it lately, or it
        left the catalog: its players got the end of its playlist). Listed again, it is listed
        from the catalog alone and pulled anew by the first request, as a rung never pulled; an
        old pull kept would have held it out of the multivariant until it idled out."""
        if self.wanted.pop(track, None) is None:
            return
        self.rungs_live.discard(track)  # it stops: pulled again, it starts behind again
        self.pulled_at.pop(track, None)
        self.source.want(track, False)

    def variants(self) -> list[tuple[LlHlsStream, str]]:
        """The video streams the multivariant playlist lists, with their playlists' URIs."""
        return [(s, f"{s.track_names[0]}.m3u8") for k, s in self.streams.items()
                if not is_audio_key(k) and s.has_media and (self.catalog is None or s.only <= self.listed_tracks)]

    def other_audio(self) -> list[tuple[LlHlsStream, str]]:
        """The audio playlists the multivariant lists beside the default audio's (``streams["a"]``),
        with their URIs: E-RTMP audio tracks 1, 2, ... (``audio-<id>``) the catalog lists, with media,
        in the default audio's codec (RFC 8216bis 4.4.6.2: a variant's CODECS cover every rendition
        of its group; a track in another codec is packaged, its playlist served, but not listed)."""
        default = self.streams["a"]
        info = self.catalog.track(next(iter(default.only))) if self.catalog is not None and default.only else None
        if info is None:
            return []
        others = []
        for k, s in self.streams.items():
            track = s.only and next(iter(s.only))
            if is_audio_key(k) and k != "a" and s.has_media and s.only != default.only:
                other = self.catalog.track(track)  # (None: it left the catalog; the broadcast's end keeps it)
                if other is not None and other.codec == info.codec:
                    others.append((s, f"{track}.m3u8"))
        return sorted(others, key=lambda pair: track_id(AUDIO, next(iter(pair[0].only))))

    def rendition_reports(self, stream: LlHlsStream, query: str) -> str:
        """EXT-X-RENDITION-REPORT lines for ``stream``'s playlist: where every other rendition the
        multivariant lists is now (RFC 8216bis 4.4.5.4), so a player switching to it asks for its
        next part at once (AVPlayer, ExoPlayer, Shaka) instead of a plain reload first. Renditions
        with no part yet (a rung not pulled) are left out."""
        others = self.variants() + [(self.streams["a"], "audio.m3u8")] + self.other_audio()
        lines = []
        for other, uri in others:
            last = other.last_part if other is not stream and not other.ended else None
            if last is not None:
                lines.append(f'#EXT-X-RENDITION-REPORT:URI="{uri}{query}",LAST-MSN={last[0]},LAST-PART={last[1]}\n')
        return "".join(lines)

    @property
    def listed_tracks(self) -> set[str]:
        """The track names of ``catalog`` (none before the first)."""
        return {t.name for t in self.catalog.tracks} if self.catalog is not None else set()

    def listed(self, key: str, stream: LlHlsStream) -> bool:
        """Whether the multivariant waits for ``stream`` to be playable (alternates not pulled yet
        are listed from the catalog alone; a track that left the catalog is not listed)."""
        track = stream.only and next(iter(stream.only))
        if self.catalog is not None and track not in self.listed_tracks:
            return False
        return key == "v" or key == "a" or self.catalog is None or not self.catalog.is_rung(track) \
            or track in self.wanted


def _ranged(request: Request, response: Response) -> Response:
    """A response that takes ranges (it says Accept-Ranges), cut to the GET's single Range."""
    if request.method != "GET" or ACCEPT_RANGES not in response.headers:
        return response
    return byte_range(response, request.headers.get("range"), request.headers.get("if-range"))


class EdgeServer:
    """LL-HLS on the node's HTTP listener. ``apps`` are the node's other routes (async
    ``(Request) -> Response | None``), tried first. ``open_broadcast`` may have an async
    ``wait_live(name, timeout)`` that returns once ``name`` is published (TimeoutError after
    ``timeout``): the page's index.m3u8?next=1 is held on it (see _next_publish); and an optional
    ``catalog(name)``: the source's catalog of ``name`` now (in-process, before the feed hands it
    over). What the publisher sends in a codec that is not carried is in the catalog (the
    broadcast's, else the edge's own from its feed), so the playlists name what is dropped instead
    of waiting for media that never comes."""

    def __init__(self, open_broadcast: Callable[[str], AsyncIterator | None], *, http: HttpConfig | None = None,
                 access: Access | None = None, apps: list[Callable[[Request], Awaitable[Response | None]]] = ()) -> None:
        self.open_broadcast = open_broadcast
        self.access = access or Access()
        self.http_config = http or HttpConfig()
        self.static_dir: Path = self.http_config.static_dir or bundled_static_dir()
        self.apps = list(apps)
        self.http = HttpServer(self.handle, self.http_config)
        self._broadcasts: dict[str, _Broadcast] = {}  # the newest of each name
        self._ended: dict[str, _Broadcast] = {}  # an ended one a new publish replaced, for its readers
        self._hls_js_bytes: bytes | None = None
        self._reaper: asyncio.Task | None = None
        self._refusals = LogLimiter(REFUSAL_LOG_INTERVAL, MAX_REFUSALS_REMEMBERED)  # (client address, broadcast)

    async def start(self) -> None:
        if not (self.static_dir / "hls.min.js").is_file():
            log.warning("hls.js is not in %s: the player page (/live/<name>/) cannot play; run `make hlsjs` "
                        "(or give --static DIR holding hls.min.js); playlists work without it", self.static_dir)
        await self.http.start()
        self._reaper = asyncio.get_running_loop().create_task(self._reap())
        log.info("LL-HLS on %s://%s:%d/live/<name>/index.m3u8", self.http.scheme, *self.address)

    @property
    def address(self) -> tuple[str, int]:
        return self.http.address

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for b in [*self._broadcasts.values(), *self._ended.values()]:
            if b.task is not None:
                b.task.cancel()
        await self.http.close()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(5)
            now = time.monotonic()
            self._ended = {name: b for name, b in self._ended.items() if now - b.ended_at <= ENDED_PLAYLIST_KEEP}
            for name, b in list(self._broadcasts.items()):
                if b.streams["v"].ended and now - b.last_request > IDLE_SECONDS:
                    del self._broadcasts[name]
                else:
                    b.idle_renditions(now)
                    b.viewers = {k: t for k, t in b.viewers.items() if now - t < VIEWER_WINDOW}
                    b.reading_live = {r for r in b.reading_live if r[0] in b.viewers}

    # -- broadcasts -----------------------------------------------------------------------------
    def _broadcast(self, name: str) -> _Broadcast | None:
        """The newest broadcast of ``name``, opened if it is not open or has ended (an ended one
        is kept if nothing of that name can be opened, for ENDED_PLAYLIST_KEEP); TOO_MANY_PENDING
        when a new one may not be opened now ([http] max_pending_broadcasts)."""
        b = self._broadcasts.get(name)
        now = time.monotonic()
        if b is not None and b.ended_at is None:
            b.last_request = now
            return b
        kept = b is not None and now - b.ended_at <= ENDED_PLAYLIST_KEEP
        source = self.open_broadcast(name)
        if source is None:
            if kept:
                b.last_request = now
                return b
            return None
        if not self._room_for_another():
            if self._refusals.due("max_pending_broadcasts", now):  # (a flood of names: once per interval)
                log.warning("edge: %d broadcasts waited for at once ([http] max_pending_broadcasts), none of them "
                            "known to be missing upstream: %s (and others) not opened",
                            self.http_config.max_pending_broadcasts, safe_name(name))
            return TOO_MANY_PENDING
        after = 0
        if kept and b.playable:  # its readers finish it while the new one takes the name
            self._ended[name] = b
        if (ended := self._ended.get(name)) is not None:  # requests tell the two apart by number
            after = ended.numbers_end
        h = self.http_config
        b = self._broadcasts[name] = _Broadcast(name, h.part_target, h.target_duration, h.audio_gap_fill, after,
                                                rendition_idle=h.rendition_idle, max_viewers=h.max_viewers_tracked,
                                                rung_gap_after=h.rung_gap_after)
        b.source = source
        b.task = asyncio.get_running_loop().create_task(self._feed(b, source))
        log.info("edge: packaging %s", safe_name(name))
        return b

    def _room_for_another(self) -> bool:
        """Whether a feed may open for another name: fewer than [http] max_pending_broadcasts
        broadcasts waited for (opened, nothing of them come yet), or one of them that upstream said
        it does not have, which is let go (the one asked for longest ago): its players were told
        404 already, and one asking again opens it anew."""
        pending = [b for b in self._broadcasts.values() if b.ended_at is None and b.catalog is None]
        if len(pending) < self.http_config.max_pending_broadcasts:
            return True
        missing = [b for b in pending if b.not_live]
        if not missing:
            return False
        gone = min(missing, key=lambda b: b.last_request)
        del self._broadcasts[gone.name]
        gone.task.cancel()  # its MoQ session closes with it
        return True

    async def _feed(self, b: _Broadcast, source: AsyncIterator) -> None:
        streams = list(b.streams.values())
        try:
            async for item in source:
                if isinstance(item, NotLive):
                    b.not_live = b.catalog is None  # (one that was live and went: its playlists end)
                elif isinstance(item, Catalog):
                    b.not_live = False
                    listed = {t.name for t in item.tracks}
                    was_kept, kept = b.kept_audio, b.keep_audio(item)
                    if b.catalog is not None:  # a track that left (a publisher back without it): its playlist ends
                        had = b.listed_tracks | ({AUDIO} if was_kept is not None else set()) | set(b.stand_ins)
                        for stream in [s for s in streams if not s.only <= listed and s.only <= had]:
                            if stream is b.streams["a"] and kept is not None:
                                continue  # silence for the players on it instead (keep_audio)
                            track = next(iter(stream.only))
                            # (a rung nobody played has no players to keep: it ends, as before)
                            source = b.stand_in(track, item) if stream.segments else None
                            b.let_go(track)  # (a rung that left with its source, or withdrawn)
                            if source is not None:  # a rung withdrawn: its players go on with its source
                                if track not in b.stand_ins:
                                    log.info("edge: %s: %s was withdrawn; its HLS playlist goes on with %s for the "
                                             "players on it", safe_name(b.name), track, source)
                                b.stand_ins[track] = source
                                continue
                            b.stand_ins.pop(track, None)
                            stream.end()
                            streams.remove(stream)
                    for track in [t for t in b.stand_ins if t in listed]:  # the rung is back: its own pictures again
                        del b.stand_ins[track]
                    b.catalog = item
                    for info in item.tracks:  # another video track: another variant; another audio track: a rendition
                        key = stream_key(info.name) if info.kind in (VIDEO, AUDIO) and info.name != AUDIO \
                            and _PLAYLIST.match(f"{info.name}.m3u8") else None
                        if key is None and info.kind == AUDIO and info.name == AUDIO and b.streams["a"].ended:
                            key = "a"  # the audio is back: a new playlist (numbered on, from the same groups)
                        if key is not None and (key not in b.streams or b.streams[key].ended):
                            old = b.streams.get(key)
                            b.streams[key] = b.new_stream({info.name}, f"{key}-")
                            if old is not None:  # an init URI names the same bytes for good
                                b.streams[key].init_version = old.init_version + 1
                            b.streams[key].group_origin = b.group_origin
                            b.streams[key].clock = b.clock
                            if item.is_rung(info.name):  # on its source's timeline (see LlHlsStream.follows)
                                b.streams[key].follows = b.streams.get(stream_key(item.rung_source(info.name)))
                            streams.append(b.streams[key])
                    b.follow_default_audio(item)
                    for stream in streams:
                        track = next(iter(stream.only))
                        if track in b.stand_ins:
                            stream.set_catalog(b.stand_in_catalog(track, item))
                        else:
                            stream.set_catalog(item if kept is None or stream is not b.streams["a"]
                                               else replace(item, tracks=item.tracks + (kept,)))
                    b.gap_fill.set_tracks(item.track(AUDIO) or kept, item.track(VIDEO), gone=kept is not None)
                elif isinstance(item, Frame):
                    b.frames_in += 1  # what came from upstream (an edge node's metrics)
                    b.bytes_in[item.track] = b.bytes_in.get(item.track, 0) + len(item.payload)
                    if item.group > b.newest_group_in:
                        b.newest_group_in = item.group
                        b.groups_in += 1
                    if b.group_origin is None:  # segment numbers of every rendition count from here
                        b.group_origin = item.group
                        for stream in streams:
                            stream.group_origin = item.group
                    if item.track == VIDEO:
                        gaps = b.gap_fill.gaps
                        for frame in b.gap_fill.video(item, time.monotonic()):
                            b.streams["a"].push(frame)
                        if b.gap_fill.gaps != gaps:
                            log.info("edge: %s: no audio for %.1f s while the video goes on; its HLS audio gets "
                                     "silence until the audio is back", safe_name(b.name), b.gap_fill.lag)
                    elif item.track == AUDIO:
                        frames = b.gap_fill.audio(item, time.monotonic())
                        if not frames:
                            continue  # inside the silence already listed
                        for frame in frames[:-1]:  # the rest of a filled gap, up to it
                            b.streams["a"].push(frame)
                    if item.track in b.stand_ins:
                        continue  # a withdrawn rung's last frames, late: its playlist has its source's now
                    for stream in streams:
                        stream.push(item)
                    b.follow_source(streams, item.track)
                    if b.stand_ins:
                        for track, source in b.stand_ins.items():
                            if source == item.track:
                                b.streams[stream_key(track)].push(replace(item, track=track))
                elif isinstance(item, GroupSkipped):  # a rung's transcoder skipped (the rest of) a group
                    stream = b.streams.get(stream_key(item.track))
                    if stream is None or stream.only != {item.track} or item.track in b.stand_ins:
                        continue
                    stream.skip(item.group)
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

    @staticmethod
    def _no_media(b: _Broadcast, what: str) -> Response:
        """The answer when ``what`` has nothing to play (yet): 404 when upstream said it has no such
        broadcast (as `rtmpq up` answers a name nobody publishes); else 503: no catalog came
        either (no answer from upstream yet, or it ended): not live; or live, its first whole
        segment not made yet."""
        if b.not_live:
            return text(404, NO_SUCH_BROADCAST)
        if b.catalog is None:
            return text(503, f"{b.name} is not live (yet): nothing of it came from upstream; ask again")
        return text(503, f"{what} has no media yet")

    async def _wait_for(self, b: _Broadcast, stream: LlHlsStream, ready: Callable[[], bool]) -> bool:
        timeout = BLOCKING_TARGET_DURATIONS * stream.target_duration()
        async with b.changed:
            try:
                await asyncio.wait_for(b.changed.wait_for(lambda: ready() or stream.ended or b.not_live), timeout)
            except TimeoutError:
                return False
        return ready()

    # -- HTTP -----------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        if request.method == "OPTIONS" and "access-control-request-method" in request.headers:
            return self._preflight(request)
        for app in self.apps:  # the node's own routes (metrics, health, API, status page) first
            response = await app(request)
            if response is not None:
                return response
        if request.method not in ("GET", "HEAD"):
            return text(405, "only GET and HEAD")
        return await self._route(request)

    def _log_refusal(self, client: str, name: str, reason: str, now: float) -> None:
        """The viewer saw the reason in its 403; the operator reads it here (a viewer's "it does not
        play" was otherwise invisible in the log), once per REFUSAL_LOG_INTERVAL per viewer."""
        if not self._refusals.due((client, name), now):
            return
        log.info("edge: viewer %s refused for %s: %s (said again for this viewer after %g s)", client,
                 safe_name(name), reason.replace(name, safe_name(name)), REFUSAL_LOG_INTERVAL)

    @staticmethod
    def _preflight(request: Request) -> Response:
        """A browser's CORS preflight (a page on another origin whose requests carry a header of
        its own, e.g. Authorization set in hls.js's xhrSetup): GET and HEAD with any headers."""
        headers = [("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS"),
                   ("Access-Control-Max-Age", str(PREFLIGHT_MAX_AGE))]
        if asked := request.headers.get("access-control-request-headers"):
            headers.append(("Access-Control-Allow-Headers", asked))  # "*" does not cover Authorization
        return Response(204, b"", cache="no-store", headers=headers)

    def _hls_js(self, request: Request) -> Response:
        if self._hls_js_bytes is None:
            path = self.static_dir / "hls.min.js"
            if not path.is_file():
                return text(404, "hls.js is not installed on this node (its log said so at start)")
            self._hls_js_bytes = path.read_bytes()
        return _ranged(request, Response(200, self._hls_js_bytes, "application/javascript", "max-age=86400",
                                         [ACCEPT_RANGES]))

    async def _route(self, request: Request) -> Response:
        raw, query_text = request.path, request.query
        try:
            segments = path_segments(raw)
        except ValueError as exc:
            return text(400, f"bad path: {exc}")
        if any("/" in s for s in segments):  # an encoded slash is a character, and no name holds one
            return text(404, f"not found: an encoded slash (%2F) is not a separator {_LEGAL_NAME}")
        path = "/".join(segments)
        if path in ("/hls.min.js", "/hls.js"):
            return self._hls_js(request)
        m = _PATH.match(path)
        named = segments[1:-1] if m is not None else segments[1:]
        if (m is not None or _PAGE_NO_SLASH.match(path)) and {".", ".."} & set(named):
            return text(404, f"not found {_LEGAL_NAME}")  # players resolve them away: never a name
        if m is None and _PAGE_NO_SLASH.match(path):  # the player page's address typed without its "/"
            return Response(308, b"", headers=[("Location", raw + "/" + (f"?{query_text}" if query_text else ""))])
        if m is None:
            return text(404, f"not found: expected /<app>/<name>/index.m3u8 {_LEGAL_NAME}")
        name = f"{m['app']}/{m['key']}"
        file = m["file"]
        page = file in ("", "index.html")
        token = parse_qs(query_text).get("token", [None])[0]
        try:  # checked on every request, so the URIs of the playlists carry a session token
            uri_token = self.access.may_play_hls(name, token, time.time())
        except AccessDenied as exc:
            if page:  # the page holds no media; the requests it makes carry the token
                return Response(200, PLAYER_PAGE.encode(), "text/html; charset=utf-8", "no-cache")
            self._log_refusal(request.client, name, str(exc), time.monotonic())
            return text(403, str(exc))
        query = f"?token={quote(uri_token, safe='')}" if uri_token else ""
        if file == "index.m3u8" and "next" in parse_qs(query_text):
            await self._next_publish(name)
        b = self._broadcast(name)  # the page opens the broadcast too: its playlist is ready sooner
        if page:  # served whether or not the broadcast is live yet: the player retries
            return Response(200, PLAYER_PAGE.encode(), "text/html; charset=utf-8", "no-cache")
        if b is None:
            return text(404, NO_SUCH_BROADCAST)
        if b is TOO_MANY_PENDING:
            return text(503, "too many broadcasts are being waited for here; ask again")
        viewer = (request.client, request.headers.get("user-agent", "")[:64])
        b = self._reading(name, b, file, query_text, viewer)
        if len(b.viewers) < b.max_viewers:
            b.viewers[viewer] = time.monotonic()
        response = _ranged(request, await self._serve_file(b, file, query_text, query, viewer))
        b.bytes_out += response.length
        return response

    def _reading(self, name: str, newest: _Broadcast, file: str, query_text: str, viewer: tuple[str, str]) -> _Broadcast:
        """The broadcast a request is for: ``newest``, or the ended one it replaced when the
        request belongs to a reader of that one (see ENDED_PLAYLIST_KEEP)."""
        ended = self._ended.get(name)
        if ended is None or ended is newest:
            return newest
        if time.monotonic() - ended.ended_at > ENDED_PLAYLIST_KEEP:
            del self._ended[name]
            return newest
        numbered = _SEGMENT.match(file) or _INIT.match(file)
        number = numbered and (numbered["msn"] if "msn" in numbered.groupdict() else numbered["version"])
        pm = _PLAYLIST.match(file)
        if pm is not None:
            number = parse_qs(query_text).get("_HLS_msn", [None])[0]
            if number is None and (viewer, f"{stream_key(pm['track'])}-") in ended.reading_live:
                return ended  # read live up to now: its next reload must see the end
        if number is not None and number.isdigit():  # numbered from each broadcast's opening on
            return ended if int(number) < newest.first else newest
        return newest if newest.playable else ended  # the new one from its first segment on

    async def _next_publish(self, name: str) -> None:
        """Wait (up to NEXT_PUBLISH_HOLD_TARGET_DURATIONS) until ``name`` has a broadcast that has
        not ended with a whole segment: a new publish."""
        loop = asyncio.get_running_loop()
        b = self._broadcasts.get(name)
        if b is None:  # the page asks after a broadcast it played: this edge knows the name
            return
        end = loop.time() + NEXT_PUBLISH_HOLD_TARGET_DURATIONS * b.streams["v"].target_duration()
        waited = False
        while (left := end - loop.time()) > 0:
            b = self._broadcast(name)
            if b is TOO_MANY_PENDING:
                return
            if b is not None and b.ended_at is None:
                async with b.changed:
                    try:
                        await asyncio.wait_for(b.changed.wait_for(lambda: b.playable or b.ended_at is not None), left)
                    except TimeoutError:
                        return
                if b.playable:
                    return
                continue
            # ended (or nothing): a source that can tell when the name is published again
            wait_live = getattr(self.open_broadcast, "wait_live", None)
            if wait_live is None or waited:
                return
            try:
                await wait_live(name, left)
            except TimeoutError:
                return
            waited = True

    async def _serve_file(self, b: _Broadcast, file: str, query_text: str, query: str,
                          viewer: tuple[str, str]) -> Response:
        video, audio = b.streams["v"], b.streams["a"]
        if b.not_live:  # upstream said so: not held for media that may never come
            return self._no_media(b, "the broadcast")
        if file == "index.m3u8":
            # every rendition the catalog has must be playable before players are pointed at them
            streams = [s for k, s in b.streams.items() if b.listed(k, s)]
            ready = lambda: all(s.playable for s in streams if s.has_media) and any(s.has_media for s in streams)  # noqa: E731
            if not any(s.has_media for s in streams) and (answer := self._not_carried(b)) is not None:
                return answer
            # a catalog that says nothing plays (codecs not carried) ends the wait too
            if not await self._wait_for(b, video, lambda: ready() or bool(self._dropped(b)[0])) or not ready():
                return self._not_carried(b) or self._no_media(b, "the broadcast")
            videos = b.variants()
            listing = multivariant_playlist(videos, audio, "audio.m3u8", query, b.other_audio())
            return Response(200, listing.encode(), PLAYLIST, "no-cache")
        pm, im = _PLAYLIST.match(file), _INIT.match(file)
        if pm is not None or im is not None:
            key = stream_key(pm["track"]) if pm is not None else im["kind"]
            wait = RENDITION_LISTING_WAIT - (time.monotonic() - b.opened_at)
            if key not in b.streams and wait > 0:  # just opened: the catalogs naming its renditions are on their way
                async with b.changed:
                    try:
                        await asyncio.wait_for(b.changed.wait_for(lambda: key in b.streams or b.not_live), wait)
                    except TimeoutError:
                        pass
            stream = b.streams.get(key)
            if stream is None:
                return text(404, NO_SUCH_BROADCAST if b.not_live else "no such rendition")
            b.asked_for(stream)
            kind = AUDIO if is_audio_key(key) else VIDEO
            if not stream.has_media and (answer := self._not_carried(b, kind)) is not None:
                return answer
            playable = lambda: stream.playable and b.caught_up(stream, time.monotonic())  # noqa: E731
            told = await self._wait_for(b, stream, lambda: playable() or bool(self._dropped(b, kind)[0]))
            if not told or not playable():
                return self._not_carried(b, kind) or self._no_media(b, "this rendition")
            if im is None:
                response = await self._media_playlist(b, stream, query_text, query)
                if response.status == 200:
                    b.read_by(viewer, stream)
                return response
            ctype = "audio/mp4" if kind == AUDIO else "video/mp4"
            if im["version"] is None:  # the newest: its content changes with the next avcC
                return Response(200, stream.init, ctype, "no-cache", [ACCEPT_RANGES])
            data = stream.init_version_data(int(im["version"]))
            if data is None:
                return text(404, "no such init segment")
            return Response(200, data, ctype, "max-age=60", [ACCEPT_RANGES])  # a version's bytes never change
        sm = _SEGMENT.match(file)
        stream = b.streams.get(sm["kind"]) if sm is not None else None
        if stream is None:
            return text(404, "not found")
        b.asked_for(stream)
        ctype = "audio/mp4" if is_audio_key(sm["kind"]) else "video/mp4"
        msn = int(sm["msn"])
        part = int(sm["part"]) if sm["part"] is not None else None
        if not stream.has(msn, part):
            # only the hinted next part, or the segment in progress, may be waited for
            last = stream.segments[-1] if stream.segments else None
            in_progress = last is not None and not last.complete and last.msn == msn
            if not ((part is not None and (msn, part) == stream.next_part) or (part is None and in_progress)):
                return text(404, "no such segment")
            if not await self._wait_for(b, stream, lambda: stream.has(msn, part)):
                return text(503, "the requested part did not appear in time")
        segment = stream.segment(msn)
        if segment is None:
            return text(404, "segment no longer available")
        if segment.gap:  # a rung's place for a group it skipped: EXT-X-GAP, nothing to fetch
            return text(404, "a gap: this rendition has no media for that segment")
        if part is None:  # its parts one after another: no joined copy per request
            return Response(200, [p.data for p in segment.parts], ctype, "max-age=60", [ACCEPT_RANGES])
        if part >= len(segment.parts):
            return text(404, "no such part")
        if segment.parts[part].gap:  # the rest of a group a rung's transcoder cut short: GAP=YES
            return text(404, "a gap: this rendition has no media for that part")
        return Response(200, segment.parts[part].data, ctype, "max-age=60", [ACCEPT_RANGES])

    def _dropped(self, b: _Broadcast, kind: str | None = None) -> tuple[list, set[str]]:
        """(what ``b``'s publisher sends that is not carried and leaves nothing to play, or, for the
        playlist of ``kind``, nothing of that kind; the kinds that play)."""
        source = getattr(self.open_broadcast, "catalog", None)
        # in-process, the source's catalog: the edge's own may not have come yet
        catalog = source(b.name) if source is not None else b.catalog
        if catalog is None or b.ended_at is not None:
            return [], set()
        listed = {t.kind for t in catalog.tracks if t.kind in (VIDEO, AUDIO)}
        dropped = list(catalog.not_carried)
        if listed:  # something plays: only a playlist of the kind that is dropped has nothing
            dropped = [d for d in dropped if d.kind == kind and kind not in listed] if kind else []
        return dropped, listed

    def _not_carried(self, b: _Broadcast, kind: str | None = None) -> Response | None:
        """The answer (503, the codecs named in NOT_CARRIED_HEADER too) when ``b`` has nothing to
        play because its publisher sends only codecs that are not carried (or, for the playlist
        of ``kind``, a codec of that kind that is not, and no track of it that is), else None."""
        dropped, listed = self._dropped(b, kind)
        if not dropped:
            return None
        what = "; ".join(d.reason() for d in dropped)
        told = f"its {what}; its {' and '.join(sorted(listed))} plays" if listed else \
            f"nothing of it can be played here: its {what}"
        return Response(503, f"{b.name} is live, but {told}\n".encode(),
                        headers=[(NOT_CARRIED_HEADER, ", ".join(f"{d.kind}={d.codec}" for d in dropped))])

    async def _media_playlist(self, b: _Broadcast, stream: LlHlsStream, query_text: str, uri_query: str) -> Response:
        query = parse_qs(query_text)
        try:
            msn = int(query["_HLS_msn"][0]) if "_HLS_msn" in query else None
            part = int(query["_HLS_part"][0]) if "_HLS_part" in query else None
        except ValueError:
            return text(400, "_HLS_msn and _HLS_part must be integers")
        if (msn is not None and msn < 0) or (part is not None and part < 0):  # decimal-integers (RFC 8216bis 4.2)
            return text(400, "_HLS_msn and _HLS_part must not be negative")
        if part is not None and msn is None:
            return text(400, "_HLS_part needs _HLS_msn")
        if msn is not None:
            newest = stream.segments[-1].msn if stream.segments else stream.first
            if msn > newest + 2:
                return text(400, "_HLS_msn is too far in the future")
            next_msn, next_part = stream.next_part
            if part is not None and msn >= next_msn and not stream.ended:
                ahead = part - next_part + 1 if msn == next_msn else part + 1  # parts past the last listed (at least)
                if ahead > part_limit(stream.part_target, stream.target_duration()):
                    return text(400, "_HLS_part is too far in the future")
            # an ended playlist is the answer to a reload for what will never come (ENDLIST)
            if not await self._wait_for(b, stream, lambda: stream.has(msn, part)) and not stream.ended:
                return text(503, "the requested part did not appear in time")
        playlist = stream.media_playlist(uri_query)
        if not stream.ended:
            playlist += b.rendition_reports(stream, uri_query)
        return Response(200, playlist.encode(), PLAYLIST, "no-cache")
