"""From RTMP media messages (FLV tag bodies) to a broadcast: catalog updates and frames.

Per publish session: timestamps are unwrapped from 32-bit (or 31-bit) milliseconds with serial arithmetic,
sequence headers become catalog tracks, every coded frame becomes a ``Frame`` whose payload is a
view into the message body (no copy).

Codecs carried: video AVC (``avc1``), HEVC (``hvc1``, also legacy CodecID 12), AV1 (``av01``) and
VP9 (``vp09``, its picture size from key frames);
audio AAC (``mp4a``), Opus (``Opus``), AC-3 and E-AC-3 (``ac-3``, ``ec-3``: described by their
frame headers). Any other codec is logged once per publish with its
FourCC and its frames are counted in ``stats.unsupported``. Every E-RTMP track id becomes its own
track: ``video``/``audio`` for track 0, ``video-<id>``/``audio-<id>`` for the others; all video
tracks of a publish are renditions of each other (one MSF altGroup).

Video groups start at each random access point (AVC IDR, HEVC IRAP, AV1 shown key frame, or the
FLV key frame flag); video tracks whose key frames share a timestamp get the same group number, so
renditions switch on the same boundaries. Audio frames belong to the group in progress of the
default video track (audio-only streams cut a group every ``AUDIO_ONLY_GROUP_MS``). Frames that
cannot be decoded from where they are (before their track's sequence header or first key frame,
or after a malformed access unit until the next key frame) are dropped and counted, never passed
on half-valid; a malformed sequence header is logged and ignored, as for AVC. An AVC or HEVC key
frame whose own (in-band) parameter sets differ from its track's configuration reconfigures the
track as a sequence header with them would, before that key frame (an MPEG-TS source restreamed
with -c copy sends no new sequence header when its size changes). An audio or video
message whose FLV tag header is truncated or contradictory raises RemoteProtocolError
(RtmpServerSession refuses those before they get here); empty messages are dropped.
E-RTMP messages of a packet type the spec reserves (or that rtmpq does not carry, as video's
MPEG2TSSequenceStart) are dropped, counted in ``stats.unknown_packets`` and logged once per publish
and type.
"""

import logging
from dataclasses import dataclass, field, replace

from ..codec import access_unit_type, amf0_decode, parse_audio_tracks, parse_video_tracks, split_length_prefixed
from ..codec.flv_types import (
    AUDIO_CODEC_NAMES,
    AUDIO_CODECS,
    AUDIO_PACKET_MULTICHANNEL_CONFIG,
    PACKET_CODED_FRAMES,
    PACKET_COMMAND,
    PACKET_METADATA,
    PACKET_SEQUENCE_END,
    PACKET_SEQUENCE_START,
    VIDEO_CODEC_NAMES,
    VIDEO_CODECS,
)
from ..errors import RemoteProtocolError
from .aac import AudioSpecificConfig
from .ac3 import Ac3Header, Eac3Header
from .av1 import Av1Config, is_key_temporal_unit
from .avc import NAL_PPS, NAL_SPS, AvcConfig, avcc_from_parameter_sets, parse_sps
from .catalog import Catalog, NotCarried, TrackInfo
from .frames import AUDIO, DATA, SOURCE_TIMESCALE, VIDEO, Frame
from .hevc import NAL_PPS as HEVC_PPS
from .hevc import NAL_SPS as HEVC_SPS
from .hevc import NAL_VPS as HEVC_VPS
from .hevc import HevcConfig, hvcc_from_parameter_sets, is_irap, parse_hevc_sps
from .opus import OPUS_SAMPLE_RATE, OpusHead
from .vp9 import Vp9Config, is_key_frame, key_frame_size

log = logging.getLogger("rtmpq.media")

AUDIO_ONLY_GROUP_MS = 2000  # group length for broadcasts without video
# E-RTMP tracks of one kind a publish may open (each is a catalog entry, a MoQ track and an LL-HLS
# rendition downstream); sequence headers for more are refused with one log line.
MAX_TRACKS_PER_KIND = 8
# Codecs not carried that a publish gets a log line (and a catalog entry) for: a publisher could
# name a new FourCC in every message, each a line and an entry kept for the publish's life.
MAX_NOT_CARRIED_LOGGED = 8
VIDEO_ALT_GROUP = 1  # MSF altGroup shared by every video track of a publish (renditions)
_NAL_IDR = 5
_SYNCFRAME_CODECS = {"ac-3": Ac3Header, "ec-3": Eac3Header}  # no sequence header: frames describe themselves
# E-RTMP packet types read and not carried (sequence end, HDR metadata, command frames, audio's
# MultichannelConfig besides Opus's): passed over without a word. Any other (reserved ones, video's
# MPEG2TSSequenceStart) gets one log line per publish and type.
_QUIET_VIDEO_PACKETS = frozenset((PACKET_SEQUENCE_END, PACKET_METADATA, PACKET_COMMAND))
_QUIET_AUDIO_PACKETS = frozenset((PACKET_SEQUENCE_END, AUDIO_PACKET_MULTICHANNEL_CONFIG))
_IMPLICIT_OPUS_HEAD = OpusHead.parse(b"")  # what an empty E-RTMP Opus sequence start stands for


# FFmpeg's and OBS's FLV writers keep 31 bits of a timestamp (``(ts >> 24) & 0x7F``), so their
# timestamps wrap at 2**31 ms, 24.8 days into a publish (or at once after -copyts): a step back
# by more than this (12.4 days between two messages) is such a wrap, time going on by
# ``delta + 2**31``. Publishers that send all 32 bits never step back that far. From such a wrap
# on, the publisher is known to send 31 bits: its steps are read modulo 2**31 (a small step back,
# audio behind video, is one; it was read as 2**31 - 18 ms forward, moving the rest of the publish
# 24.8 days on).
WRAP_31_STEP_BACK = 0x40000000
# A track whose timestamps step back further than this (ms) between two of its frames had its
# encoder's clock jump back (reset, or a source that restarted its timeline): its time goes on from
# its last frame instead (one frame interval later), so what follows is not replayed over what was
# sent (an HLS segment with time going back inside it played its audio 3 s off its video). Smaller
# steps back are jitter, left as they are; steps forward are real gaps (dropped frames), kept.
CLOCK_JUMP_BACK_MS = 500


def _empty_header(log_name: str, tag) -> list:
    """An empty sequence header: ffmpeg sends one when it copies a stream whose configuration it
    learns from the stream itself (-c copy from MPEG-TS: ADTS audio), then the real one with the
    first frame. It was a warning, "sequence header ... rejected", for every such publish."""
    log.debug("%s: empty %s sequence header (the configuration follows)", log_name, tag.codec)
    return []


class TimestampUnwrapper:
    """32-bit millisecond timestamps to a monotonic-ish 64-bit timeline (serial arithmetic), and
    31-bit ones (see WRAP_31_STEP_BACK)."""

    __slots__ = ("_last", "_raw", "_bits31", "_below_zero")

    def __init__(self, below_zero=None) -> None:
        """``below_zero(ms)``: called when a step back would take the timeline below 0, where it
        goes on from 0 instead (no frame may be before 0)."""
        self._last: int | None = None  # the last timestamp, unwrapped
        self._raw: int | None = None  # the last timestamp as sent
        self._bits31 = False  # a 31-bit wrap was seen: steps are read modulo 2**31
        self._below_zero = below_zero

    def unwrap(self, ts32: int) -> int:
        if self._last is None:
            self._last = self._raw = ts32
            return ts32
        if self._bits31:
            delta = ((ts32 - self._raw + 0x40000000) & 0x7FFFFFFF) - 0x40000000
        else:
            delta = ((ts32 - self._raw + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            if delta < -WRAP_31_STEP_BACK:
                delta += 0x80000000
                self._bits31 = True
        self._raw = ts32
        self._last += delta
        if self._last < 0:
            if self._below_zero is not None:
                self._below_zero(-self._last)
            self._last = 0
        return self._last


@dataclass(slots=True)
class DemuxStats:
    frames: dict = field(default_factory=lambda: {VIDEO: 0, AUDIO: 0, DATA: 0})
    dropped: int = 0
    bad_access_units: int = 0
    clock_jumps: int = 0  # a track's timestamps stepped back further than CLOCK_JUMP_BACK_MS
    below_zero: int = 0  # timestamps that stepped back below the publish's time 0 (its timeline moved on)
    shown_before_decoded: int = 0  # video frames with a negative composition offset, shown at their decode time
    unsupported: int = 0  # frames and headers of codecs that are not carried
    unknown_packets: int = 0  # E-RTMP messages of a packet type the spec reserves (or rtmpq does not carry)


@dataclass(slots=True)
class _Track:
    """Per-track state of one E-RTMP track id of one kind."""

    name: str
    codec: str = ""  # FourCC of its configuration
    config: object = None  # AvcConfig / HevcConfig / Av1Config / AudioSpecificConfig / OpusHead
    group: int = -1
    index: int = 0
    resync: bool = False  # a bad access unit was seen: wait for the next keyframe
    group_start: int | None = None  # audio-only: dts of the group's first frame
    shift: int = 0  # added to its timestamps since its clock jumped back (CLOCK_JUMP_BACK_MS)
    last_dts: int | None = None  # of its last frame, and of the one before (for its interval)
    prev_dts: int | None = None
    rejected: tuple | None = None  # in-band (VPS, SPS, PPS) that did not parse, not tried again


def track_name(kind: str, track_id: int) -> str:
    return kind if track_id == 0 else f"{kind}-{track_id}"


def track_id(kind: str, name: str) -> int | None:
    """The E-RTMP track id of the track ``name`` of ``kind`` (track_name's inverse); None for a
    name track_name does not make ("video-480p", a rung)."""
    if name == kind:
        return 0
    number = name[len(kind) + 1:] if name.startswith(f"{kind}-") else ""
    return int(number) if number.isdigit() else None


class BroadcastDemuxer:
    """Feed ``message(type_id, timestamp32, body, received_ns)``; read ``catalog`` and the output list."""

    def __init__(self, broadcast: str, *, log_name: str = "?", not_carried=None) -> None:
        """``not_carried``: called with a NotCarried the first time a publish sends a codec that is
        not carried (once per kind and codec)."""
        self.catalog = Catalog(broadcast=broadcast)
        self.stats = DemuxStats()
        self._log_name = log_name
        self._clock = TimestampUnwrapper(self._below_zero)
        self._video: dict[int, _Track] = {}
        self._default_video: _Track | None = None  # track 0, else the lowest id: what audio and data follow
        self._video0: _Track | None = None  # track 0 of each kind: media()'s fast path, without a lookup
        self._audio0: _Track | None = None
        self._audio: dict[int, _Track] = {}
        self._last_keyframe: tuple[int, int] | None = None  # (dts, group) of the newest video group start
        self._data_group = -1
        self._data_index = 0
        self._meta: dict = {}  # the publisher's onMetaData
        self._not_carried: set[tuple[str, str]] = set()  # (kind, FourCC) already logged
        self._on_not_carried = not_carried
        self._unknown_logged: set[tuple[str, int]] = set()  # (kind, E-RTMP packet type) already logged
        self._now_ms: int | None = None

    @property
    def _video_group(self) -> int:
        """The group in progress of the default video track (track 0, else the lowest id):
        audio and data follow it."""
        track = self._default_video
        return -1 if track is None else track.group

    def message(self, type_id: int, timestamp: int, body, received_ns: int = 0) -> list:
        """Returns a list of Catalog (when it changed) and Frame objects, in order."""
        if not len(body):  # Wowza sends empty media messages: nothing to carry
            self.stats.dropped += 1
            return []
        ts = self._clock.unwrap(timestamp)
        self._now_ms = received_ns // 1_000_000 if received_ns else None
        if type_id == 9:
            out = []
            for tag in parse_video_tracks(body):
                out += self._on_video(tag, ts, body, received_ns)
            return out
        if type_id == 8:
            out = []
            for tag in parse_audio_tracks(body):
                out += self._on_audio(tag, ts, body, received_ns)
            return out
        if type_id == 18:
            return self._on_data(ts, body, received_ns)
        return []

    def media(self, type_id: int, timestamp: int, payload, codec: str | None, frame_type: int, cts: int,
              header: bytes | None, received_ns: int = 0) -> list:
        """``message`` for a message whose FLV header ChunkReader.read_messages read and split off
        (``header`` its bytes, ``payload`` the rest, which becomes the frame's payload as it is);
        ``codec`` None: it did not, ``payload`` is the whole message and this is ``message``. The
        same results, with less work per frame for the common case (a coded frame of track 0
        whose track is known)."""
        if codec is None:
            return self.message(type_id, timestamp, payload, received_ns)
        track = self._video0 if type_id == 9 else self._audio0
        if track is None or track.codec != codec:  # dropped there, or counted: the whole message again
            return self.message(type_id, timestamp, header + payload, received_ns)
        clock = self._clock  # TimestampUnwrapper.unwrap, inline for a small step forward
        raw = clock._raw
        if raw is not None and 0 <= timestamp - raw < WRAP_31_STEP_BACK:
            ts = clock._last = clock._last + timestamp - raw
            clock._raw = timestamp
        else:
            ts = clock.unwrap(timestamp)
        ts += track.shift  # _continued, inline: no call per frame for the common case
        last = track.last_dts
        if last is not None and ts < last - CLOCK_JUMP_BACK_MS:
            ts = self._clock_jumped(track, ts)
        track.prev_dts = last
        track.last_dts = ts
        self._now_ms = received_ns // 1_000_000 if received_ns else None
        if type_id == 8:
            if not payload:
                self.stats.dropped += 1
                return []
            group = self._next_audio_group(track, ts)
            frame = Frame(track.name, group, track.index, ts, ts, True, payload, received_ns)
            track.index += 1
            self.stats.frames[AUDIO] += 1
            return [frame]
        try:
            kind = access_unit_type(payload, 0, track.config.nal_length_size, codec == "hvc1")
        except RemoteProtocolError:
            self.stats.bad_access_units += 1
            track.resync = True
            return []
        if not kind:
            return []  # an empty access unit
        keyframe = frame_type == 1 or kind == 2
        if keyframe:
            out = self._in_band_parameter_sets(track, 0, payload)
            self._open_video_group(track, ts)
        elif track.group < 0 or track.resync:
            self.stats.dropped += 1
            return []
        pts = ts + cts if cts >= 0 else self._shown_early(track, ts, cts)
        frame = Frame(track.name, track.group, track.index, ts, pts, keyframe, payload, received_ns)
        track.index += 1
        self.stats.frames[VIDEO] += 1
        return [*out, frame] if keyframe and out else [frame]

    def _continued(self, track: _Track, ts: int) -> int:
        """``ts`` on the track's own timeline (see CLOCK_JUMP_BACK_MS); media() inlines this."""
        ts += track.shift
        last = track.last_dts
        if last is not None and ts < last - CLOCK_JUMP_BACK_MS:
            ts = self._clock_jumped(track, ts)
        track.prev_dts = last
        track.last_dts = ts
        return ts

    def _clock_jumped(self, track: _Track, ts: int) -> int:
        """The track's clock stepped back: it goes on one frame interval after its last frame."""
        last, prev = track.last_dts, track.prev_dts
        interval = last - prev if prev is not None and last > prev else 1
        track.shift += last + interval - ts
        self.stats.clock_jumps += 1
        if self.stats.clock_jumps == 1:  # once per publish: a publisher could step back at every frame
            log.warning("%s: the timestamps of %s stepped back %d ms; its time goes on from its last frame",
                        self._log_name, track.name, last - ts)
        return last + interval

    def _below_zero(self, step_back: int) -> None:
        """A timestamp stepped back below the publish's time 0 (a publisher whose first frames are
        stamped before its sequence headers' 0, as 2**32 - n): the publish's timeline goes on from
        0 there, for every track alike, since no frame may be before 0 (fMP4's decode time, LOC's
        timestamp)."""
        self.stats.below_zero += 1
        if self.stats.below_zero == 1:
            log.warning("%s: a timestamp stepped back %d ms below the publish's time 0; its time goes on from 0",
                        self._log_name, step_back)

    def _shown_early(self, track: _Track, dts: int, cts: int) -> int:
        """A video frame's presentation time when its composition offset is negative (shown before
        it is decoded, which no player can do; FLV's CompositionTime is signed): its decode time.
        fMP4 could carry it, but MoQ's (LOC's) timestamp offset cannot."""
        self.stats.shown_before_decoded += 1
        if self.stats.shown_before_decoded == 1:
            log.warning("%s: a frame of %s is stamped to be shown %d ms before it is decoded; such frames "
                        "are shown at their decode time", self._log_name, track.name, -cts)
        return dts

    def _room_for(self, kind: str, tracks: dict) -> bool:
        if len(tracks) < MAX_TRACKS_PER_KIND:
            return True
        self.stats.unsupported += 1
        if (kind, "") not in self._not_carried:
            self._not_carried.add((kind, ""))
            log.warning("%s: more than %d %s tracks (MAX_TRACKS_PER_KIND); the others are dropped",
                        self._log_name, MAX_TRACKS_PER_KIND, kind)
        return False

    def _passed_over(self, kind: str, tag, quiet: frozenset) -> list:
        """A message with nothing to carry: sequence end, HDR metadata, command frames pass
        without a word; a packet type the spec reserves (or video's MPEG2TSSequenceStart) is
        counted and logged once per publish and type (at most 16 of each kind: 4 bits)."""
        if tag.packet_type in quiet:
            return []
        self.stats.unknown_packets += 1
        if (kind, tag.packet_type) not in self._unknown_logged:
            self._unknown_logged.add((kind, tag.packet_type))
            log.warning("%s: %s %s packet type %d (codec %r, track %d) is reserved or not carried; "
                        "such messages are dropped", self._log_name, "E-RTMP" if tag.enhanced else "FLV", kind,
                        tag.packet_type, tag.codec, tag.track_id)
        return []

    def _not_carried_codec(self, kind: str, fourcc: str) -> list:
        self.stats.unsupported += 1
        if (kind, fourcc) not in self._not_carried and len(self._not_carried) <= MAX_NOT_CARRIED_LOGGED:
            self._not_carried.add((kind, fourcc))
            if len(self._not_carried) > MAX_NOT_CARRIED_LOGGED:
                log.warning("%s: more than %d codecs not carried (MAX_NOT_CARRIED_LOGGED); the others are "
                            "dropped without a word", self._log_name, MAX_NOT_CARRIED_LOGGED)
                return []
            names = VIDEO_CODEC_NAMES if kind == VIDEO else AUDIO_CODEC_NAMES
            carried = ", ".join(names[c] for c in (VIDEO_CODECS if kind == VIDEO else AUDIO_CODECS))
            dropped = NotCarried(kind, names.get(fourcc, "unknown"), fourcc, carried,
                                 "-c:v libx264" if kind == VIDEO else "-c:a aac")
            log.warning("%s: %s codec %s (FLV %r) is not carried; its frames are dropped (carried: %s; ffmpeg: %s)",
                        self._log_name, kind, dropped.codec, fourcc, carried, dropped.ffmpeg)
            if self._on_not_carried is not None:
                self._on_not_carried(dropped)
        return []

    # -- video ----------------------------------------------------------------------------------
    def _on_video(self, tag, ts: int, body, received_ns: int) -> list:
        if tag.packet_type not in (PACKET_SEQUENCE_START, PACKET_CODED_FRAMES):
            return self._passed_over(VIDEO, tag, _QUIET_VIDEO_PACKETS)
        if tag.codec not in VIDEO_CODECS:
            return self._not_carried_codec(VIDEO, tag.codec)
        payload = memoryview(body)[tag.payload_offset : tag.payload_end]
        track = self._video.get(tag.track_id)
        if tag.packet_type == PACKET_SEQUENCE_START:
            return self._video_config(tag.codec, tag.track_id, payload) if len(payload) else _empty_header(self._log_name, tag)
        if track is None or track.codec != tag.codec:
            self.stats.dropped += 1
            return []
        try:
            keyframe = self._video_keyframe(track, tag, payload)
        except RemoteProtocolError:
            self.stats.bad_access_units += 1
            track.resync = True
            return []
        if keyframe is None:
            return []  # an empty access unit
        ts = self._continued(track, ts)
        out = []
        if keyframe:
            if tag.codec == "vp09":
                out = self._vp9_size(track, payload)
            elif tag.codec != "av01":
                out = self._in_band_parameter_sets(track, tag.track_id, payload)
            self._open_video_group(track, ts)
        elif track.group < 0 or track.resync:
            self.stats.dropped += 1
            return []
        pts = ts + tag.cts if tag.cts >= 0 else self._shown_early(track, ts, tag.cts)
        frame = Frame(track.name, track.group, track.index, ts, pts, keyframe, payload, received_ns)
        track.index += 1
        self.stats.frames[VIDEO] += 1
        return [*out, frame]

    def _vp9_size(self, track: _Track, payload) -> list:
        """VP9's picture size is in its key frames, not in vpcC: a catalog when it changes."""
        info = self.catalog.track(track.name)
        try:
            width, height = key_frame_size(payload)
        except RemoteProtocolError:
            return []  # the FLV said key frame, the bitstream did not: keep what the catalog has
        if info is None or (info.width, info.height) == (width, height):
            return []
        return self._set_track(replace(info, width=width, height=height))

    def _video_keyframe(self, track: _Track, tag, payload) -> bool | None:
        """Whether the access unit is a random access point; None when it is empty. Raises
        RemoteProtocolError when it does not frame."""
        if tag.codec == "av01":
            if not len(payload):
                return None
            rap = is_key_temporal_unit(payload, track.config.sequence_header.reduced_still_picture_header)
            return tag.frame_type == 1 or rap
        if tag.codec == "vp09":
            return None if not len(payload) else tag.frame_type == 1 or is_key_frame(payload)
        units = split_length_prefixed(payload, track.config.nal_length_size)
        if not units:
            return None
        if tag.codec == "hvc1":
            return tag.frame_type == 1 or is_irap(units)
        return tag.frame_type == 1 or any(len(u) and (u[0] & 0x1F) == _NAL_IDR for u in units)

    def _in_band_parameter_sets(self, track: _Track, track_id: int, payload) -> list:
        """An AVC or HEVC key frame's own parameter sets (SPS, PPS; HEVC also VPS: an MPEG-TS or
        HLS source restreamed with -c copy carries its configuration in-band and sends no new
        sequence header when it changes): when they differ from the track's configuration, the
        catalog a sequence header with them would make (and one log line); nothing when they are
        the same (such a source repeats them at every key frame) or the frame has none. Only key
        frames come here: it splits the access unit a second time and reads each unit's header."""
        config = track.config
        units = split_length_prefixed(payload, config.nal_length_size)
        if track.codec == "hvc1":
            types = [(unit[0] >> 1) & 0x3F for unit in units]
            vps, sps, pps = ([u for u, t in zip(units, types) if t == kind] for kind in (HEVC_VPS, HEVC_SPS, HEVC_PPS))
            current = (config.vps, config.sps, config.pps)
        else:
            sps = [u for u in units if u[0] & 0x1F == NAL_SPS]
            pps = [u for u in units if u[0] & 0x1F == NAL_PPS]
            vps, current = [], ((), config.sps, config.pps)
        found = (vps, sps, pps)
        if all(not got or tuple(got) == have for got, have in zip(found, current)):
            return []  # none in-band, or the ones the track has
        found = tuple(tuple(bytes(u) for u in got) if got else have for got, have in zip(found, current))
        info = self.catalog.track(track.name)
        if found == track.rejected or info is None:
            return []  # the same bad units as at an earlier key frame: logged then
        try:
            if track.codec == "hvc1":
                record = hvcc_from_parameter_sets(info.init_data, *found)
            else:
                record = avcc_from_parameter_sets(found[1], found[2], config.nal_length_size)
            out = self._video_config(track.codec, track_id, record)
        except RemoteProtocolError as exc:
            track.rejected = found
            log.warning("%s: in-band parameter sets of %s rejected (its configuration is kept): %s",
                        self._log_name, track.name, exc)
            return []
        if track.config is config:  # the record did not parse (logged as a sequence header's)
            track.rejected = found
        elif out:
            new = self.catalog.track(track.name)
            log.info("%s: %s parameter sets changed in-band at a key frame: %sx%s -> %sx%s (%s)", self._log_name,
                     track.name, info.width, info.height, new.width, new.height, new.codec)
        return out

    def _open_video_group(self, track: _Track, ts: int) -> None:
        group = track.group + 1
        if track is self._default_video:  # (track 0, else the lowest id: what audio follows)
            # never behind audio: audio may have opened this group before the first keyframe
            group = max(group, max((a.group for a in self._audio.values()), default=-1))
        if self._last_keyframe is not None and self._last_keyframe[0] == ts:
            group = max(group, self._last_keyframe[1])  # renditions switch on the same boundaries
        if self._last_keyframe is None or ts >= self._last_keyframe[0]:
            self._last_keyframe = (ts, group)
        track.group = group
        track.index = 0
        track.resync = False

    def _video_config(self, codec: str, track_id: int, payload) -> list:
        """The track ``track_id`` configured by the record ``payload`` (a sequence header's, or one
        made of a key frame's in-band parameter sets): a catalog when that changed it."""
        name = track_name(VIDEO, track_id)
        try:
            if codec == "avc1":
                config = AvcConfig.parse(payload)
                sps = parse_sps(config.sps[0]) if config.sps else None
                size = (sps.width, sps.height) if sps else (None, None)
                framerate = sps.framerate if sps else None
                nal_length_size = config.nal_length_size
            elif codec == "hvc1":
                config = HevcConfig.parse(payload)
                sps = parse_hevc_sps(config.sps[0])
                size, framerate, nal_length_size = (sps.width, sps.height), None, config.nal_length_size
            elif codec == "av01":
                config = Av1Config.parse(payload)
                header = config.sequence_header
                size, framerate, nal_length_size = (header.width, header.height), header.framerate, None
            else:
                config = Vp9Config.parse(payload)  # the size comes with the first key frame
                meta = self._track_meta(VIDEO, track_id)
                size = (_int(meta.get("width")), _int(meta.get("height")))
                framerate, nal_length_size = None, None
        except RemoteProtocolError as exc:
            log.warning("%s: %s sequence header of %s rejected: %s", self._log_name, codec, name, exc)
            return []
        if track_id not in self._video and not self._room_for(VIDEO, self._video):
            return []
        track = self._video.setdefault(track_id, _Track(name))
        default = self._video0 = self._video.get(0)
        self._default_video = default if default is not None else self._video[min(self._video)]
        if track.codec and track.codec != codec:
            track.resync = True  # a new codec: its frames start at its next keyframe
        track.codec, track.config = codec, config
        meta = self._track_meta(VIDEO, track_id)
        info = TrackInfo(
            name=name, kind=VIDEO, codec=config.codec_string, init_data=bytes(payload),
            timescale=SOURCE_TIMESCALE, nal_length_size=nal_length_size, width=size[0], height=size[1],
            framerate=framerate or _number(meta.get("framerate")), alt_group=VIDEO_ALT_GROUP,
            **_bitrate(meta, VIDEO, config.max_bitrate()),
        )
        return self._set_track(info)

    # -- audio ----------------------------------------------------------------------------------
    def _on_audio(self, tag, ts: int, body, received_ns: int) -> list:
        if tag.packet_type == AUDIO_PACKET_MULTICHANNEL_CONFIG and tag.codec == "Opus":
            return self._opus_channel_count(tag, memoryview(body)[tag.payload_offset : tag.payload_end])
        if tag.packet_type not in (PACKET_SEQUENCE_START, PACKET_CODED_FRAMES):
            return self._passed_over(AUDIO, tag, _QUIET_AUDIO_PACKETS)
        if tag.codec not in AUDIO_CODECS:
            return self._not_carried_codec(AUDIO, tag.codec)
        payload = memoryview(body)[tag.payload_offset : tag.payload_end]
        if tag.packet_type == PACKET_SEQUENCE_START:
            # E-RTMP: an empty Opus sequence start is plain mono/stereo Opus (no OpusHead), not
            # a header to wait for as ffmpeg's empty AAC one is
            if len(payload) or tag.codec == "Opus":
                return self._audio_sequence_start(tag, payload)
            return _empty_header(self._log_name, tag)
        out = []
        if tag.codec in _SYNCFRAME_CODECS and len(payload):
            out = self._syncframe_track(tag, payload)
        track = self._audio.get(tag.track_id)
        if track is None or track.codec != tag.codec or not len(payload):
            self.stats.dropped += 1
            return out
        ts = self._continued(track, ts)
        group = self._next_audio_group(track, ts)
        frame = Frame(track.name, group, track.index, ts, ts, True, payload, received_ns)
        track.index += 1
        self.stats.frames[AUDIO] += 1
        return [*out, frame]

    def _syncframe_track(self, tag, payload) -> list:
        """The track of an AC-3/E-AC-3 stream, from its frame header; a catalog when it is new or
        changed."""
        track = self._audio.get(tag.track_id)
        key = bytes(payload[4:8] if tag.codec == "ac-3" else payload[2:8])  # the header after AC-3's crc1
        if track is not None and track.codec == tag.codec and key == track.config:
            return []  # the same header bytes as the track's: unchanged
        name = track_name(AUDIO, tag.track_id)
        try:
            header = _SYNCFRAME_CODECS[tag.codec].parse(payload)
        except RemoteProtocolError as exc:
            if track is None or track.codec != tag.codec:
                log.warning("%s: %s frame header of %s rejected: %s", self._log_name, tag.codec, name, exc)
            return []
        meta = self._audio_track(tag, name, key)
        if meta is None:
            return []
        init, bound = (header.dac3(), header.max_bitrate()) if tag.codec == "ac-3" else (
            header.dec3(), header.max_bitrate(len(payload)))  # with its dependent substreams
        return self._set_track(TrackInfo(
            name=name, kind=AUDIO, codec=header.codec_string, init_data=init, timescale=SOURCE_TIMESCALE,
            sample_rate=header.sample_rate, channels=header.channels, **_bitrate(meta, AUDIO, bound)))

    def _opus_channel_count(self, tag, payload) -> list:
        """E-RTMP MultichannelConfig of an Opus track whose sequence start was empty (no
        OpusHead, taken as stereo): its channel count, 1 or 2 (more would need the OpusHead's
        stream counts, which the message does not give)."""
        track = self._audio.get(tag.track_id)
        if track is None or track.codec != "Opus" or track.config != _IMPLICIT_OPUS_HEAD or len(payload) < 2:
            return []  # an OpusHead said it all, or no track (yet) to apply it to
        count = payload[1]
        if count == track.config.channels:
            return []
        name = track_name(AUDIO, tag.track_id)
        if count not in (1, 2):
            log.warning("%s: Opus track %s says %d channels (MultichannelConfig) with no OpusHead to map them; "
                        "it is carried as stereo", self._log_name, name, count)
            return []
        return self._opus_track(tag, name, replace(_IMPLICIT_OPUS_HEAD, channels=count))

    def _audio_sequence_start(self, tag, payload) -> list:
        name = track_name(AUDIO, tag.track_id)
        if tag.codec in _SYNCFRAME_CODECS:
            return []  # described by its frames
        try:
            if tag.codec == "mp4a":
                config = AudioSpecificConfig.parse(bytes(payload))
            else:
                return self._opus_track(tag, name, OpusHead.parse(payload))
        except RemoteProtocolError as exc:
            log.warning("%s: %s sequence header of %s rejected: %s", self._log_name, tag.codec, name, exc)
            return []
        return self._audio_config(tag, name, config, bytes(payload), config.sample_rate, config.channels)

    def _opus_track(self, tag, name: str, config: OpusHead) -> list:
        return self._audio_config(tag, name, config, config.to_bytes(), OPUS_SAMPLE_RATE, config.channels)

    def _audio_config(self, tag, name: str, config, init: bytes, rate: int, channels: int) -> list:
        """The audio track ``tag`` describes, configured by ``config``: a catalog when that changed it."""
        meta = self._audio_track(tag, name, config)
        if meta is None:
            return []
        info = TrackInfo(
            name=name, kind=AUDIO, codec=config.codec_string, init_data=init,
            timescale=SOURCE_TIMESCALE, sample_rate=rate, channels=channels,
            **_bitrate(meta, AUDIO, config.max_bitrate()),
        )
        return self._set_track(info)

    def _audio_track(self, tag, name: str, config) -> dict | None:
        """The audio track ``tag`` describes, taken with its codec and ``config``: its metadata
        (onMetaData); None when it is a new track with no room left for it."""
        if tag.track_id not in self._audio and not self._room_for(AUDIO, self._audio):
            return None
        track = self._audio.setdefault(tag.track_id, _Track(name))
        self._audio0 = self._audio.get(0)
        track.codec, track.config = tag.codec, config
        return self._track_meta(AUDIO, tag.track_id)

    def _next_audio_group(self, track: _Track, ts: int) -> int:
        video = self._default_video
        if video is not None:  # max(video.group, track.group, 0) without a builtin call per frame (issue 12)
            target = video.group
            if track.group > target:
                target = track.group
            if target < 0:
                target = 0
        elif track.group_start is None or ts - track.group_start >= AUDIO_ONLY_GROUP_MS:
            track.group_start = ts
            target = track.group + 1
        else:
            target = track.group
        if target != track.group:
            track.group = target
            track.index = 0
        return target

    # -- data -----------------------------------------------------------------------------------
    def _on_data(self, ts: int, body, received_ns: int) -> list:
        try:
            values = amf0_decode(body)
        except RemoteProtocolError:
            self.stats.dropped += 1
            return []
        if values and values[0] == "@setDataFrame":
            values = values[1:]
        if values and values[0] == "onMetaData":
            meta = values[1] if len(values) > 1 and isinstance(values[1], dict) else {}
            self._meta = meta
            self.catalog = Catalog(self.catalog.broadcast, self.catalog.tracks, self.catalog.version,
                                   {k: v for k, v in meta.items() if isinstance(v, (str, float, bool))},
                                   self.catalog.generated_at)
            return self._apply_metadata()
        # the group in progress on the media tracks (audio's, for audio-only broadcasts); object
        # ids restart at 0 in each group, as MoQ subscribers and the group cache expect
        audio_group = max((t.group for t in self._audio.values()), default=-1)
        group = max(self._video_group, audio_group, 0)
        if group != self._data_group:
            self._data_group = group
            self._data_index = 0
        frame = Frame(DATA, group, self._data_index, ts, ts, True, body, received_ns)
        self._data_index += 1
        self.stats.frames[DATA] += 1
        if self.catalog.track(DATA) is None:
            return [*self._set_track(TrackInfo(name=DATA, kind=DATA, codec="amf0")), frame]
        return [frame]

    def _track_meta(self, kind: str, track_id: int) -> dict:
        """onMetaData for one track: the top level for track 0, else its E-RTMP TrackIdInfoMap
        entry over the top level."""
        meta = self._meta
        if track_id == 0:
            return meta
        per_track = meta.get(f"{kind}TrackIdInfoMap")
        entry = per_track.get(str(track_id)) if isinstance(per_track, dict) else None
        return entry if isinstance(entry, dict) else {}

    def _apply_metadata(self) -> list:
        """Bitrates (and frame rates the bitstream did not give) of tracks that came before it."""
        out = []
        for kind, tracks in ((VIDEO, self._video), (AUDIO, self._audio)):
            for track_id, track in tracks.items():
                info = self.catalog.track(track.name)
                if info is None:
                    continue
                meta = self._track_meta(kind, track_id)
                stated = _stated_bitrate(meta, kind)
                bitrate = {"bitrate": stated, "bitrate_is_bound": False} if stated else {}
                framerate = info.framerate or (_number(meta.get("framerate")) if kind == VIDEO else None)
                updated = replace(info, framerate=framerate, **bitrate)
                if updated != info:
                    out = self._set_track(updated)
        return out

    def _set_track(self, info: TrackInfo) -> list:
        current = self.catalog.track(info.name)
        if current == info:
            return []  # repeated sequence header (OBS resends them): nothing changed
        self.catalog = self.catalog.with_track(info, generated_at=self._now_ms)
        return [self.catalog]


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def _int(value) -> int | None:
    number = _number(value)
    return int(number) if number else None


def _bitrate(meta: dict, kind: str, bound: int) -> dict:
    """TrackInfo's bitrate fields: the onMetaData rate (the encoder's own setting) wins over
    ``bound``, the codec configuration's upper bound, which MSF's MUST falls back to."""
    stated = _stated_bitrate(meta, kind)
    return {"bitrate": stated, "bitrate_is_bound": False} if stated else {"bitrate": bound, "bitrate_is_bound": True}


def _stated_bitrate(meta: dict, kind: str) -> int | None:
    """onMetaData rates are in kilobits per second; MSF's bitrate is in bits per second."""
    rate = _number(meta.get("videodatarate" if kind == VIDEO else "audiodatarate"))
    return int(rate * 1000) if rate else None
