"""From RTMP media messages (FLV tag bodies) to a broadcast: catalog updates and frames.

Per publish session: timestamps are unwrapped from 32-bit milliseconds with serial arithmetic,
the AVC/AAC sequence headers become catalog tracks, every coded frame becomes a ``Frame`` whose
payload is a view into the message body (no copy). Video groups start at each keyframe; audio
frames belong to the video group in progress (audio-only streams cut a group every
``AUDIO_ONLY_GROUP_MS``). Frames that cannot be decoded from where they are (before the first
sequence header or keyframe, or after a malformed access unit until the next keyframe) are
dropped and counted, never passed on half-valid. An audio or video message whose FLV tag header is
truncated or contradictory raises RemoteProtocolError (RtmpServerSession refuses those before they
get here); empty messages are dropped.
"""

import logging
from dataclasses import dataclass, field

from ..codec import amf0_decode, parse_audio_tag, parse_video_tag, split_length_prefixed
from ..errors import RemoteProtocolError
from .aac import AudioSpecificConfig
from .avc import AvcConfig, parse_sps
from .catalog import Catalog, TrackInfo
from .frames import AUDIO, DATA, SOURCE_TIMESCALE, VIDEO, Frame

log = logging.getLogger("rtmpq.media")

AUDIO_ONLY_GROUP_MS = 2000  # group length for broadcasts without video
_NAL_IDR = 5


class TimestampUnwrapper:
    """32-bit millisecond timestamps to a monotonic-ish 64-bit timeline (serial arithmetic)."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def unwrap(self, ts32: int) -> int:
        if self._last is None:
            self._last = ts32
            return ts32
        delta = ((ts32 - self._last) + 0x80000000) % 0x100000000 - 0x80000000
        self._last += delta
        return self._last


@dataclass(slots=True)
class DemuxStats:
    frames: dict = field(default_factory=lambda: {VIDEO: 0, AUDIO: 0, DATA: 0})
    dropped: int = 0
    bad_access_units: int = 0
    unsupported: int = 0


class BroadcastDemuxer:
    """Feed ``message(type_id, timestamp32, body, received_ns)``; read ``catalog`` and the output list."""

    def __init__(self, broadcast: str, *, log_name: str = "?") -> None:
        self.catalog = Catalog(broadcast=broadcast)
        self.stats = DemuxStats()
        self._log_name = log_name
        self._clock = TimestampUnwrapper()
        self._video: AvcConfig | None = None
        self._audio_ok = False
        self._video_group = -1
        self._video_index = 0
        self._video_resync = False  # a bad access unit was seen: wait for the next keyframe
        self._audio_group = -1
        self._audio_index = 0
        self._audio_group_start: int | None = None
        self._data_group = -1
        self._data_index = 0

    def message(self, type_id: int, timestamp: int, body, received_ns: int = 0) -> list:
        """Returns a list of Catalog (when it changed) and Frame objects, in order."""
        if not len(body):
            self.stats.dropped += 1
            return []
        ts = self._clock.unwrap(timestamp)
        if type_id == 9:
            return self._on_video(ts, body, received_ns)
        if type_id == 8:
            return self._on_audio(ts, body, received_ns)
        if type_id == 18:
            return self._on_data(ts, body, received_ns)
        return []

    # -- video ----------------------------------------------------------------------------------
    def _on_video(self, ts: int, body, received_ns: int) -> list:
        tag = parse_video_tag(body)
        if tag.codec != "avc1" or tag.track_id != 0:
            self.stats.unsupported += 1  # other codecs, and E-RTMP tracks beyond the default one
            return []
        payload = memoryview(body)[tag.payload_offset : tag.payload_end]
        if tag.packet_type == 0:  # sequence start: avcC
            try:
                config = AvcConfig.parse(bytes(payload))
                sps = parse_sps(config.sps[0]) if config.sps else None
            except RemoteProtocolError as exc:
                log.warning("%s: AVC sequence header rejected: %s", self._log_name, exc)
                return []
            self._video = config
            info = TrackInfo(
                name=VIDEO, kind=VIDEO, codec=config.codec_string, init_data=bytes(payload),
                timescale=SOURCE_TIMESCALE, nal_length_size=config.nal_length_size,
                width=sps.width if sps else None, height=sps.height if sps else None,
                framerate=sps.framerate if sps else None,
            )
            return self._set_track(info)
        if tag.packet_type != 1 or self._video is None:
            if tag.packet_type == 1:
                self.stats.dropped += 1
            return []
        try:
            units = split_length_prefixed(payload, self._video.nal_length_size)
        except RemoteProtocolError:
            self.stats.bad_access_units += 1
            self._video_resync = True
            return []
        if not units:
            return []
        keyframe = tag.frame_type == 1 or any(len(u) and (u[0] & 0x1F) == _NAL_IDR for u in units)
        if keyframe:
            # never behind audio: audio may have opened this group before the first keyframe
            self._video_group = max(self._video_group + 1, self._audio_group)
            self._video_index = 0
            self._video_resync = False
        elif self._video_group < 0 or self._video_resync:
            self.stats.dropped += 1
            return []
        frame = Frame(VIDEO, self._video_group, self._video_index, ts, ts + tag.cts, keyframe, payload, received_ns)
        self._video_index += 1
        self.stats.frames[VIDEO] += 1
        return [frame]

    # -- audio ----------------------------------------------------------------------------------
    def _on_audio(self, ts: int, body, received_ns: int) -> list:
        tag = parse_audio_tag(body)
        if tag.codec != "mp4a" or tag.track_id != 0:
            self.stats.unsupported += 1
            return []
        payload = memoryview(body)[tag.payload_offset : tag.payload_end]
        if tag.packet_type == 0:
            try:
                asc = AudioSpecificConfig.parse(bytes(payload))
            except RemoteProtocolError as exc:
                log.warning("%s: AAC sequence header rejected: %s", self._log_name, exc)
                return []
            self._audio_ok = True
            info = TrackInfo(
                name=AUDIO, kind=AUDIO, codec=asc.codec_string, init_data=bytes(payload),
                timescale=SOURCE_TIMESCALE, sample_rate=asc.sample_rate, channels=asc.channels,
            )
            return self._set_track(info)
        if not self._audio_ok or tag.packet_type != 1 or not len(payload):
            self.stats.dropped += 1
            return []
        group = self._next_audio_group(ts)
        frame = Frame(AUDIO, group, self._audio_index, ts, ts, True, payload, received_ns)
        self._audio_index += 1
        self.stats.frames[AUDIO] += 1
        return [frame]

    def _next_audio_group(self, ts: int) -> int:
        if self.catalog.track(VIDEO) is not None:
            target = max(self._video_group, self._audio_group, 0)
        elif self._audio_group_start is None or ts - self._audio_group_start >= AUDIO_ONLY_GROUP_MS:
            self._audio_group_start = ts
            target = self._audio_group + 1
        else:
            target = self._audio_group
        if target != self._audio_group:
            self._audio_group = target
            self._audio_index = 0
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
            self.catalog = Catalog(self.catalog.broadcast, self.catalog.tracks, self.catalog.version,
                                   {k: v for k, v in meta.items() if isinstance(v, (str, float, bool))})
            return []
        # the group in progress on the media tracks (audio's, for audio-only broadcasts); object
        # ids restart at 0 in each group, as MoQ subscribers and the group cache expect
        group = max(self._video_group, self._audio_group, 0)
        if group != self._data_group:
            self._data_group = group
            self._data_index = 0
        frame = Frame(DATA, group, self._data_index, ts, ts, True, body, received_ns)
        self._data_index += 1
        self.stats.frames[DATA] += 1
        if self.catalog.track(DATA) is None:
            return [*self._set_track(TrackInfo(name=DATA, kind=DATA, codec="amf0")), frame]
        return [frame]

    def _set_track(self, info: TrackInfo) -> list:
        current = self.catalog.track(info.name)
        if current == info:
            return []  # repeated sequence header (OBS resends them): nothing changed
        self.catalog = self.catalog.with_track(info)
        return [self.catalog]
