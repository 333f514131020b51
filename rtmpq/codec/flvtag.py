"""FLV audio/video tag headers, legacy and Enhanced RTMP v2 (pure-Python reference of ext/flvtag.pxi).

E-RTMP multitrack: ``parse_*_tag`` return the first track of a message (with its track id),
``parse_*_tracks`` every track of it (OBS sends extra renditions that way; each becomes a track).
ModEx prefixes are skipped. Truncated or contradictory headers raise RemoteProtocolError.
"""

from ..errors import RemoteProtocolError
from .flv_types import PACKET_CODED_FRAMES, PACKET_COMMAND, AudioTag, VideoTag

__all__ = ["parse_video_tag", "parse_audio_tag", "parse_video_tracks", "parse_audio_tracks"]

# Tracks read from one E-RTMP multitrack message (track ids are 8 bits; an encoder sends a few).
MAX_TRACKS_PER_MESSAGE = 64

_LEGACY_VIDEO = {7: "avc1", 12: "hvc1", 13: "av01"}  # CodecIDs some encoders use before E-RTMP
_LEGACY_AUDIO = {10: "mp4a", 2: ".mp3", 14: ".mp3"}
_VIDEO_MODEX, _VIDEO_MULTITRACK, _VIDEO_CODED_FRAMES_X, _VIDEO_CODED_FRAMES = 7, 6, 3, 1
_AUDIO_MODEX, _AUDIO_MULTITRACK = 7, 5
_ONE_TRACK, _MANY_TRACKS_MANY_CODECS = 0, 2


def _need(body, pos: int, n: int, what: str) -> None:
    if len(body) - pos < n:
        raise RemoteProtocolError(f"FLV {what} tag truncated at byte {pos}")


def _fourcc(body, pos: int) -> str:
    return bytes(body[pos : pos + 4]).decode("latin-1")


def _skip_modex(body, pos: int, packet_type: int, modex: int, what: str) -> tuple[int, int]:
    """Skip ModEx blocks; returns (position after them, the real packet type)."""
    while packet_type == modex:
        _need(body, pos, 1, what)
        size = body[pos] + 1
        pos += 1
        if size == 256:
            _need(body, pos, 2, what)
            size = ((body[pos] << 8) | body[pos + 1]) + 1
            pos += 2
        _need(body, pos, size + 1, what)
        pos += size
        packet_type = body[pos] & 0x0F
        pos += 1
    return pos, packet_type


def _tracks(body, pos: int, multitrack_code: int, what: str, every: bool) -> tuple[int, list]:
    """E-RTMP multitrack header and its tracks: (packet type, [(FourCC, track id, data start, end)]).
    Only the first track unless ``every``."""
    _need(body, pos, 1, what)
    multitrack_type = body[pos] >> 4
    packet_type = body[pos] & 0x0F
    pos += 1
    if packet_type == multitrack_code or multitrack_type > _MANY_TRACKS_MANY_CODECS:
        raise RemoteProtocolError(f"FLV {what} multitrack header is invalid")
    fourcc = None
    if multitrack_type != _MANY_TRACKS_MANY_CODECS:
        _need(body, pos, 4, what)
        fourcc = _fourcc(body, pos)
        pos += 4
    tracks = []
    while True:
        if len(tracks) >= MAX_TRACKS_PER_MESSAGE:
            raise RemoteProtocolError(f"FLV {what} message with more than {MAX_TRACKS_PER_MESSAGE} tracks")
        if multitrack_type == _MANY_TRACKS_MANY_CODECS:
            _need(body, pos, 4, what)
            fourcc = _fourcc(body, pos)
            pos += 4
        _need(body, pos, 1, what)
        track_id = body[pos]
        pos += 1
        end = len(body)
        if multitrack_type != _ONE_TRACK:
            _need(body, pos, 3, what)
            size = (body[pos] << 16) | (body[pos + 1] << 8) | body[pos + 2]
            pos += 3
            if size > len(body) - pos:
                raise RemoteProtocolError(f"FLV {what} multitrack track of {size} bytes past the end")
            end = pos + size
        tracks.append((fourcc, track_id, pos, end))
        pos = end
        if not every or multitrack_type == _ONE_TRACK or pos >= len(body):
            return packet_type, tracks


def _video(body, every: bool) -> list:
    _need(body, 0, 1, "video")
    b0 = body[0]
    frame_type = (b0 >> 4) & 0x07
    if not b0 & 0x80:  # legacy FLV VideoTagHeader
        codec_id = b0 & 0x0F
        codec = _LEGACY_VIDEO.get(codec_id, f"legacy-{codec_id}")
        if frame_type == 5:
            return [VideoTag(codec, frame_type, PACKET_COMMAND, 0, False, 0, len(body), len(body))]
        if codec_id in (7, 12, 13):
            _need(body, 1, 4, "video")
            cts = (body[2] << 16) | (body[3] << 8) | body[4]
            if cts & 0x800000:
                cts -= 0x1000000
            return [VideoTag(codec, frame_type, body[1], cts, False, 0, 5, len(body))]
        return [VideoTag(codec, frame_type, PACKET_CODED_FRAMES, 0, False, 0, 1, len(body))]
    pos, packet_type = _skip_modex(body, 1, b0 & 0x0F, _VIDEO_MODEX, "video")
    if frame_type == 5 and packet_type != 4:
        return [VideoTag("", frame_type, PACKET_COMMAND, 0, True, 0, len(body), len(body))]
    if packet_type == _VIDEO_MULTITRACK:
        packet_type, tracks = _tracks(body, pos, _VIDEO_MULTITRACK, "video", every)
    else:
        _need(body, pos, 4, "video")
        tracks = [(_fourcc(body, pos), 0, pos + 4, len(body))]
    out = []
    for fourcc, track_id, pos, end in tracks:
        cts = 0
        if packet_type == _VIDEO_CODED_FRAMES and fourcc in ("avc1", "hvc1"):
            if end - pos < 3:
                raise RemoteProtocolError(f"FLV video tag truncated at byte {pos}")
            cts = (body[pos] << 16) | (body[pos + 1] << 8) | body[pos + 2]
            if cts & 0x800000:
                cts -= 0x1000000
            pos += 3
        out.append(VideoTag(fourcc, frame_type, PACKET_CODED_FRAMES if packet_type == _VIDEO_CODED_FRAMES_X
                            else packet_type, cts, True, track_id, pos, end))
    return out


def parse_video_tag(body) -> VideoTag:
    """The header of a video message (its first track, if E-RTMP multitrack)."""
    return _video(body, False)[0]


def parse_video_tracks(body) -> list[VideoTag]:
    """One VideoTag per track of a video message (one for all but E-RTMP multitrack messages)."""
    return _video(body, True)


def _audio(body, every: bool) -> list:
    _need(body, 0, 1, "audio")
    b0 = body[0]
    sound_format = b0 >> 4
    if sound_format != 9:  # legacy AudioTagHeader
        codec = _LEGACY_AUDIO.get(sound_format, f"legacy-{sound_format}")
        rate, size, stereo = (b0 >> 2) & 3, (b0 >> 1) & 1, bool(b0 & 1)
        if sound_format == 10:
            _need(body, 1, 1, "audio")
            return [AudioTag(codec, body[1], False, 0, 2, len(body), rate, size, stereo)]
        return [AudioTag(codec, PACKET_CODED_FRAMES, False, 0, 1, len(body), rate, size, stereo)]
    pos, packet_type = _skip_modex(body, 1, b0 & 0x0F, _AUDIO_MODEX, "audio")
    if packet_type == _AUDIO_MULTITRACK:
        packet_type, tracks = _tracks(body, pos, _AUDIO_MULTITRACK, "audio", every)
    else:
        _need(body, pos, 4, "audio")
        tracks = [(_fourcc(body, pos), 0, pos + 4, len(body))]
    return [AudioTag(fourcc, packet_type, True, track_id, pos, end, 0, 0, False) for fourcc, track_id, pos, end in tracks]


def parse_audio_tag(body) -> AudioTag:
    """The header of an audio message (its first track, if E-RTMP multitrack)."""
    return _audio(body, False)[0]


def parse_audio_tracks(body) -> list[AudioTag]:
    """One AudioTag per track of an audio message (one for all but E-RTMP multitrack messages)."""
    return _audio(body, True)
