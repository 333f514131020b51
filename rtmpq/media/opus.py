"""Opus: the identification header (OpusHead, RFC 7845 5.1) and its ISOBMFF twin (dOps).

Opus always decodes at 48 kHz; the input sample rate in the header is for information only.
"""

import struct
from dataclasses import dataclass

from ..errors import RemoteProtocolError

OPUS_SAMPLE_RATE = 48000
OPUS_HEAD_SIZE = 19
MAX_STREAM_BITRATE = 510_000  # RFC 6716 2.1.1: 6 to 510 kbit/s per Opus stream


@dataclass(frozen=True, slots=True)
class OpusHead:
    channels: int
    pre_skip: int  # samples at 48 kHz
    input_sample_rate: int
    output_gain: int  # Q7.8 dB, signed
    mapping_family: int
    mapping: bytes  # stream count, coupled count, channel mapping (families other than 0)

    codec_string = "opus"  # WebCodecs; the ISOBMFF sample entry (and HLS CODECS) is "Opus"

    @property
    def streams(self) -> int:
        """Opus streams per packet: mapping family 0 has one (mono or coupled stereo)."""
        return self.mapping[0] if self.mapping else 1

    def max_bitrate(self) -> int:
        """Bits per second no stream of this header exceeds (RFC 7845: packets of ``streams`` streams)."""
        return MAX_STREAM_BITRATE * self.streams

    @classmethod
    def parse(cls, data) -> "OpusHead":
        data = bytes(data)
        if not data:  # E-RTMP: an empty sequence start means plain mono/stereo; take stereo
            return cls(2, 0, OPUS_SAMPLE_RATE, 0, 0, b"")
        if len(data) < OPUS_HEAD_SIZE or data[:8] != b"OpusHead":
            raise RemoteProtocolError(f"OpusHead of {len(data)} bytes is not an Opus identification header")
        if data[8] >> 4:
            raise RemoteProtocolError(f"OpusHead version {data[8]} is not 0.x")
        channels = data[9]
        if channels == 0:
            raise RemoteProtocolError("OpusHead with 0 channels")
        pre_skip, rate, gain, family = struct.unpack_from("<HIhB", data, 10)
        mapping = b""
        if family != 0:
            if len(data) < OPUS_HEAD_SIZE + 2 + channels:
                raise RemoteProtocolError("OpusHead channel mapping table truncated")
            mapping = data[OPUS_HEAD_SIZE : OPUS_HEAD_SIZE + 2 + channels]
            streams, coupled = mapping[0], mapping[1]
            if streams == 0 or coupled > streams:
                raise RemoteProtocolError(f"OpusHead stream counts {streams}/{coupled} are invalid")
        elif channels > 2:
            raise RemoteProtocolError(f"OpusHead mapping family 0 with {channels} channels")
        return cls(channels, pre_skip, rate, gain, family, mapping)

    def to_bytes(self) -> bytes:
        """The OpusHead this describes (what the catalog and LOC carry as init data)."""
        return (b"OpusHead" + struct.pack("<BBHIhB", 1, self.channels, self.pre_skip, self.input_sample_rate,
                                          self.output_gain, self.mapping_family) + self.mapping)

    def dops(self) -> bytes:
        """The body of an ISOBMFF OpusSpecificBox (big-endian, version 0)."""
        return struct.pack(">BBHIhB", 0, self.channels, self.pre_skip, self.input_sample_rate, self.output_gain,
                           self.mapping_family) + self.mapping
