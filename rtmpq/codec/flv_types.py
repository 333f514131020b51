"""Parsed FLV audio/video tag headers (shared by both twins of rtmpq.codec.flvtag)."""

from dataclasses import dataclass

# Normalised packet types (legacy AVC/AAC packet types map onto the same numbers).
PACKET_SEQUENCE_START = 0
PACKET_CODED_FRAMES = 1
PACKET_SEQUENCE_END = 2
PACKET_METADATA = 4
AUDIO_PACKET_MULTICHANNEL_CONFIG = 4  # E-RTMP AudioPacketType.MultichannelConfig (audio's 4)
PACKET_COMMAND = 0x100  # a video command frame (FrameType 5): no media payload

FRAME_KEY = 1
FRAME_INTER = 2
FRAME_DISPOSABLE_INTER = 3
FRAME_GENERATED_KEY = 4
FRAME_COMMAND = 5

# The codecs rtmpq carries from an FLV publish to its tracks (FourCCs; legacy CodecIDs map onto
# them); the ingest announces them to E-RTMP clients.
VIDEO_CODECS = ("avc1", "hvc1", "av01", "vp09")
AUDIO_CODECS = ("mp4a", "Opus", "ac-3", "ec-3")

# What a streamer knows the codecs by, for the log line of one that is not carried (FourCCs, and
# the legacy FLV CodecIDs / SoundFormats that have none: "legacy-<n>").
VIDEO_CODEC_NAMES = {
    "avc1": "H.264", "hvc1": "HEVC", "av01": "AV1", "vp09": "VP9", "vp08": "VP8", "vvc1": "VVC",
    "legacy-2": "Sorenson H.263", "legacy-3": "Screen Video", "legacy-4": "On2 VP6",
    "legacy-5": "On2 VP6 with alpha", "legacy-6": "Screen Video 2",
}
AUDIO_CODEC_NAMES = {
    "mp4a": "AAC", "Opus": "Opus", "ac-3": "AC-3", "ec-3": "E-AC-3", ".mp3": "MP3", "fLaC": "FLAC",
    "legacy-0": "PCM", "legacy-1": "ADPCM", "legacy-3": "PCM", "legacy-4": "Nellymoser",
    "legacy-5": "Nellymoser", "legacy-6": "Nellymoser", "legacy-7": "G.711 A-law",
    "legacy-8": "G.711 mu-law", "legacy-11": "Speex",
}


@dataclass(frozen=True, slots=True)
class VideoTag:
    codec: str  # FourCC: "avc1" (legacy CodecID 7 too), "hvc1", "av01", "vp09", or "legacy-<id>"
    frame_type: int  # 1 key, 2 inter, 3 disposable, 4 generated key, 5 command
    packet_type: int  # PACKET_* above; enhanced types without a legacy twin keep their number
    cts: int  # signed composition time offset in ms (0 where the format carries none)
    enhanced: bool
    track_id: int  # 0 unless the tag is E-RTMP multitrack
    payload_offset: int  # codec payload is body[payload_offset:payload_end]
    payload_end: int


@dataclass(frozen=True, slots=True)
class AudioTag:
    codec: str  # "mp4a" (legacy SoundFormat 10 too), "Opus", "fLaC", "ac-3", "ec-3", "mp3 ", "legacy-<n>"
    packet_type: int  # PACKET_SEQUENCE_START / PACKET_CODED_FRAMES / ...
    enhanced: bool
    track_id: int
    payload_offset: int
    payload_end: int
    sound_rate: int  # legacy header bits (0..3), 0 for enhanced
    sound_size: int  # 0 = 8 bit, 1 = 16 bit
    stereo: bool
