"""AV1: the AV1CodecConfigurationRecord (av1C) and the sequence header OBU.

AV1-ISOBMFF 2.3 (the record), AV1 spec 5.5 (the sequence header, read as far as the maximum frame
size), AV1-ISOBMFF Annex A (the codec string ``av01.P.LLT.DD``). Truncated or contradictory input
raises RemoteProtocolError.
"""

from dataclasses import dataclass

from ..codec import BitReader, split_obus
from ..errors import RemoteProtocolError
from .avc import MAX_DIMENSION

OBU_SEQUENCE_HEADER = 1
OBU_TEMPORAL_DELIMITER = 2
OBU_FRAME_HEADER = 3
OBU_FRAME = 6

AV1C_HEADER_SIZE = 4

# AV1 spec Annex A.3 level table: MaxBitrate (MainMbps, HighMbps) by seq_level_idx, in Mbit/s;
# tiers start at level 4.0. Level 31 ("maximum parameters") has no limit: it takes the top.
MAX_BITRATE_MBPS = {0: (1.5, 1.5), 1: (3, 3), 4: (6, 6), 5: (10, 10), 8: (12, 30), 9: (20, 50), 12: (30, 100),
                    13: (40, 160), 14: (60, 240), 15: (60, 240), 16: (60, 240), 17: (100, 480),
                    18: (160, 800), 19: (160, 800)}
BITRATE_PROFILE_FACTOR = (1, 2, 3)  # Annex A.3, by seq_profile


@dataclass(frozen=True, slots=True)
class Av1SequenceHeader:
    profile: int
    reduced_still_picture_header: bool
    width: int  # max_frame_width_minus_1 + 1
    height: int
    framerate: float | None  # from timing_info, when present


def _uvlc(r: BitReader) -> int:
    zeros = 0
    while not r.read_bit():
        zeros += 1
        if zeros >= 32:
            raise RemoteProtocolError("AV1 sequence header: uvlc() longer than 32 bits")
    return (1 << zeros) - 1 + r.read_bits(zeros)


def parse_sequence_header(payload) -> Av1SequenceHeader:
    """The payload of an OBU_SEQUENCE_HEADER (after the OBU header and size)."""
    r = BitReader(bytes(payload))
    profile = r.read_bits(3)
    if profile > 2:
        raise RemoteProtocolError(f"AV1 sequence header seq_profile {profile} is reserved")
    r.skip_bits(1)  # still_picture
    reduced = r.read_bit()
    framerate = None
    if reduced:
        r.skip_bits(5)  # seq_level_idx[0]
    else:
        decoder_model_info = False
        buffer_delay_length = 0
        if r.read_bit():  # timing_info_present_flag
            units = r.read_bits(32)
            scale = r.read_bits(32)
            ticks = 1
            if r.read_bit():  # equal_picture_interval
                ticks = _uvlc(r) + 1
            if units and scale:
                framerate = round(scale / (units * ticks), 3)
            decoder_model_info = bool(r.read_bit())
            if decoder_model_info:
                buffer_delay_length = r.read_bits(5) + 1
                r.skip_bits(32 + 5 + 5)
        initial_display_delay = r.read_bit()
        for _ in range(r.read_bits(5) + 1):  # operating points
            r.skip_bits(12)  # operating_point_idc
            if r.read_bits(5) > 7:  # seq_level_idx
                r.skip_bits(1)  # seq_tier
            if decoder_model_info and r.read_bit():
                r.skip_bits(2 * buffer_delay_length + 1)
            if initial_display_delay and r.read_bit():
                r.skip_bits(4)
    width_bits = r.read_bits(4) + 1
    height_bits = r.read_bits(4) + 1
    width = r.read_bits(width_bits) + 1
    height = r.read_bits(height_bits) + 1
    if width > MAX_DIMENSION or height > MAX_DIMENSION:
        raise RemoteProtocolError(f"AV1 sequence header frame size {width}x{height} is too large")
    return Av1SequenceHeader(profile, bool(reduced), width, height, framerate)


@dataclass(frozen=True, slots=True)
class Av1Config:
    profile: int
    level: int  # seq_level_idx_0
    tier: int
    bit_depth: int  # 8, 10 or 12
    monochrome: bool
    sequence_header: Av1SequenceHeader

    @property
    def codec_string(self) -> str:
        return f"av01.{self.profile}.{self.level:02d}{'MH'[self.tier]}.{self.bit_depth:02d}"

    def max_bitrate(self) -> int:
        """Bits per second no stream of this profile, level and tier (the av1C's, operating point
        0's) exceeds."""
        main, high = MAX_BITRATE_MBPS.get(self.level, max(MAX_BITRATE_MBPS.values()))
        return int((high if self.tier else main) * 1_000_000) * BITRATE_PROFILE_FACTOR[self.profile]

    @classmethod
    def parse(cls, data) -> "Av1Config":
        data = bytes(data)
        if len(data) < AV1C_HEADER_SIZE:
            raise RemoteProtocolError(f"av1C of {len(data)} bytes is too short (at least {AV1C_HEADER_SIZE})")
        if data[0] != 0x81:
            raise RemoteProtocolError(f"av1C marker/version byte {data[0]:#x} (expected 0x81)")
        profile, level = data[1] >> 5, data[1] & 0x1F
        tier, high_bitdepth, twelve_bit, monochrome = data[2] >> 7, (data[2] >> 6) & 1, (data[2] >> 5) & 1, (data[2] >> 4) & 1
        header = None
        for obu_type, _, start, end in split_obus(data[AV1C_HEADER_SIZE:]):
            if obu_type == OBU_SEQUENCE_HEADER:
                header = parse_sequence_header(data[AV1C_HEADER_SIZE + start : AV1C_HEADER_SIZE + end])
                break
        if header is None:
            raise RemoteProtocolError("av1C carries no sequence header OBU")
        if header.profile != profile:
            raise RemoteProtocolError(f"av1C seq_profile {profile} differs from its sequence header's {header.profile}")
        bit_depth = 12 if high_bitdepth and twelve_bit else 10 if high_bitdepth else 8
        return cls(profile, level, tier, bit_depth, bool(monochrome), header)


def is_key_temporal_unit(data, reduced_still_picture_header: bool = False) -> bool:
    """True when a temporal unit holds a shown key frame (a random access point). Raises
    RemoteProtocolError when its OBUs do not frame."""
    for obu_type, _, start, end in split_obus(data):
        if obu_type in (OBU_FRAME, OBU_FRAME_HEADER) and end > start:
            if reduced_still_picture_header:
                return True
            # uncompressed_header(): show_existing_frame(1), frame_type(2) (0 = KEY_FRAME), show_frame(1)
            return (data[start] & 0xF0) == 0x10
    return False
