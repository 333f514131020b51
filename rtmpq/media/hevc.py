"""H.265/HEVC: the HEVCDecoderConfigurationRecord (hvcC) and the sequence parameter set.

ISO/IEC 14496-15 8.3.3 (the record), ITU-T H.265 7.3.2.2 (the SPS, read as far as the picture
size), RFC 6381 / ISO/IEC 14496-15 Annex E (the codec string). Every count and length is checked
against the bytes that are there; anything truncated or out of range raises RemoteProtocolError.
"""

from dataclasses import dataclass

from ..codec import BitReader, unescape_rbsp
from ..errors import RemoteProtocolError
from .avc import MAX_DIMENSION

NAL_IRAP_FIRST = 16  # BLA_W_LP .. CRA_NUT, and two reserved IRAP types up to 23
NAL_IRAP_LAST = 23
NAL_VPS = 32
NAL_SPS = 33
NAL_PPS = 34
NAL_AUD = 35

HVCC_HEADER_SIZE = 23

# H.265 Table A.8 (A.9 in later editions): MaxBR by general_level_idc, (Main tier, High tier), in
# units of CpbNalFactor bits/s; levels below 4 have no High tier.
MAX_BR = {30: (128, 128), 60: (1500, 1500), 63: (3000, 3000), 90: (6000, 6000), 93: (10000, 10000),
          120: (12000, 30000), 123: (20000, 50000), 150: (25000, 100000), 153: (40000, 160000),
          156: (60000, 240000), 180: (60000, 240000), 183: (120000, 480000), 186: (240000, 800000)}
# CpbNalFactor (the NAL HRD's: every byte, not only VCL) of Main, Main 10 and Main Still Picture.
CPB_NAL_FACTOR_MAIN = 1100
_MAIN_PROFILES = (1, 2, 3)
# Range extension and later profiles scale it by up to 2 for 16-bit samples, 2 for 4:4:4 and 2 for
# intra-only: their bound takes all three, as their constraint flags are not read here.
RANGE_EXTENSION_SCALE = 8


def nal_unit_type(nal) -> int:
    return (nal[0] >> 1) & 0x3F


def is_irap(nal_units) -> bool:
    """An intra random access point picture (IDR, CRA or BLA): decoding can start here."""
    return any(len(u) >= 2 and NAL_IRAP_FIRST <= (u[0] >> 1) & 0x3F <= NAL_IRAP_LAST for u in nal_units)


@dataclass(frozen=True, slots=True)
class HevcConfig:
    profile_space: int
    tier: int
    profile_idc: int
    compatibility: int  # general_profile_compatibility_flags, 32 bits
    constraints: bytes  # general_constraint_indicator_flags, 6 bytes
    level_idc: int
    chroma_format: int
    bit_depth: int
    nal_length_size: int
    vps: tuple[bytes, ...]
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]

    @property
    def codec_string(self) -> str:
        """``hvc1.<space><profile>.<compat, bit-reversed hex>.<L|H><level>[.<constraint bytes>]``."""
        space = ("", "A", "B", "C")[self.profile_space]
        compat = int(f"{self.compatibility:032b}"[::-1], 2)
        constraints = self.constraints.rstrip(b"\x00")
        tail = "".join(f".{b:02X}" for b in constraints)
        return f"hvc1.{space}{self.profile_idc}.{compat:X}.{'HL'[self.tier == 0]}{self.level_idc}{tail}"

    def max_bitrate(self) -> int:
        """Bits per second no stream of this profile, tier and level exceeds; a level outside
        Table A.8 takes its top."""
        main, high = MAX_BR.get(self.level_idc, max(MAX_BR.values()))
        factor = CPB_NAL_FACTOR_MAIN
        if self.profile_idc not in _MAIN_PROFILES:
            factor *= RANGE_EXTENSION_SCALE
        return (high if self.tier else main) * factor

    @classmethod
    def parse(cls, data) -> "HevcConfig":
        data = bytes(data)
        if len(data) < HVCC_HEADER_SIZE:
            raise RemoteProtocolError(f"hvcC of {len(data)} bytes is too short (at least {HVCC_HEADER_SIZE})")
        if data[0] != 1:
            raise RemoteProtocolError(f"hvcC configurationVersion {data[0]} (expected 1)")
        length_size = (data[21] & 0x03) + 1
        if length_size == 3:
            raise RemoteProtocolError("hvcC lengthSizeMinusOne = 2 is not allowed")
        arrays: dict[int, list[bytes]] = {NAL_VPS: [], NAL_SPS: [], NAL_PPS: []}
        pos = HVCC_HEADER_SIZE
        for _ in range(data[22]):
            if len(data) - pos < 3:
                raise RemoteProtocolError("hvcC NAL unit array header truncated")
            kind = data[pos] & 0x3F
            count = int.from_bytes(data[pos + 1 : pos + 3], "big")
            pos += 3
            for _ in range(count):
                if len(data) - pos < 2:
                    raise RemoteProtocolError("hvcC NAL unit length truncated")
                n = int.from_bytes(data[pos : pos + 2], "big")
                pos += 2
                if n < 2 or n > len(data) - pos:
                    raise RemoteProtocolError(f"hvcC NAL unit of {n} bytes runs past the end")
                if kind in arrays:
                    arrays[kind].append(data[pos : pos + n])
                pos += n
        if not arrays[NAL_SPS]:
            raise RemoteProtocolError("hvcC carries no SPS")
        return cls(
            profile_space=data[1] >> 6, tier=(data[1] >> 5) & 1, profile_idc=data[1] & 0x1F,
            compatibility=int.from_bytes(data[2:6], "big"), constraints=data[6:12], level_idc=data[12],
            chroma_format=data[16] & 0x03, bit_depth=(data[17] & 0x07) + 8, nal_length_size=length_size,
            vps=tuple(arrays[NAL_VPS]), sps=tuple(arrays[NAL_SPS]), pps=tuple(arrays[NAL_PPS]),
        )


@dataclass(frozen=True, slots=True)
class HevcSpsInfo:
    profile_idc: int
    level_idc: int
    width: int  # after the conformance window
    height: int
    chroma_format_idc: int
    bit_depth: int
    bit_depth_chroma: int = 8


def _ue(r: BitReader, maximum: int, name: str) -> int:
    v = r.read_ue()
    if v > maximum:
        raise RemoteProtocolError(f"HEVC SPS {name} = {v} out of range (max {maximum})")
    return v


def parse_hevc_sps(nal) -> HevcSpsInfo:
    """Parse an SPS NAL unit (with its 2-byte NAL header) as far as the picture size and bit depth."""
    nal = bytes(nal)
    if len(nal) < 4 or nal_unit_type(nal) != NAL_SPS:
        raise RemoteProtocolError("not an HEVC SPS NAL unit")
    r = BitReader(unescape_rbsp(nal[2:]))
    r.skip_bits(4)  # sps_video_parameter_set_id
    max_sub_layers_minus1 = r.read_bits(3)
    if max_sub_layers_minus1 > 6:
        raise RemoteProtocolError(f"HEVC SPS sps_max_sub_layers_minus1 = {max_sub_layers_minus1} out of range")
    r.skip_bits(1)  # sps_temporal_id_nesting_flag
    # profile_tier_level(1, sps_max_sub_layers_minus1)
    r.skip_bits(3)  # general_profile_space, general_tier_flag
    profile_idc = r.read_bits(5)
    r.skip_bits(32 + 48)  # compatibility flags, constraint flags
    level_idc = r.read_bits(8)
    present = [(r.read_bit(), r.read_bit()) for _ in range(max_sub_layers_minus1)]
    if max_sub_layers_minus1 > 0:
        r.skip_bits(2 * (8 - max_sub_layers_minus1))  # reserved_zero_2bits
    for profile_present, level_present in present:
        if profile_present:
            r.skip_bits(88)
        if level_present:
            r.skip_bits(8)
    _ue(r, 15, "sps_seq_parameter_set_id")
    chroma_format_idc = _ue(r, 3, "chroma_format_idc")
    separate_colour_plane = r.read_bit() if chroma_format_idc == 3 else 0
    width = _ue(r, MAX_DIMENSION, "pic_width_in_luma_samples")
    height = _ue(r, MAX_DIMENSION, "pic_height_in_luma_samples")
    if width == 0 or height == 0:
        raise RemoteProtocolError("HEVC SPS picture of size zero")
    if r.read_bit():  # conformance_window_flag
        sub_w = 2 if chroma_format_idc in (1, 2) and not separate_colour_plane else 1
        sub_h = 2 if chroma_format_idc == 1 and not separate_colour_plane else 1
        left, right, top, bottom = (_ue(r, MAX_DIMENSION, "conf_win_offset") for _ in range(4))
        width -= sub_w * (left + right)
        height -= sub_h * (top + bottom)
        if width <= 0 or height <= 0:
            raise RemoteProtocolError("HEVC SPS conformance window leaves no picture")
    bit_depth = 8 + _ue(r, 8, "bit_depth_luma_minus8")
    bit_depth_chroma = 8 + _ue(r, 8, "bit_depth_chroma_minus8")
    return HevcSpsInfo(profile_idc, level_idc, width, height, chroma_format_idc, bit_depth, bit_depth_chroma)


def hvcc_from_parameter_sets(record, vps, sps, pps) -> bytes:
    """The hvcC ``record`` with these VPS, SPS and PPS NAL units instead of its own (the ones a
    key frame carries in-band): profile, tier, level, constraint flags, chroma format, bit depths
    and temporal layers from the first SPS; what the units do not say (min_spatial_segmentation,
    parallelismType, avgFrameRate, constantFrameRate, lengthSizeMinusOne) as ``record`` says it;
    its other arrays (SEI) are left out. Raises RemoteProtocolError when the SPS does not parse."""
    record = bytes(record)
    info = parse_hevc_sps(sps[0])
    rbsp = unescape_rbsp(sps[0][2:])[:13]  # sub-layer fields, general profile_tier_level
    out = bytearray(record[:HVCC_HEADER_SIZE])
    out[1:13] = rbsp[1:13]  # general_profile_space .. general_level_idc, byte for byte
    out[16] = 0xFC | info.chroma_format_idc
    out[17] = 0xF8 | (info.bit_depth - 8)
    out[18] = 0xF8 | (info.bit_depth_chroma - 8)
    layers, nested = ((rbsp[0] >> 1) & 0x07) + 1, rbsp[0] & 0x01
    out[21] = (record[21] & 0xC3) | (layers << 3) | (nested << 2)
    arrays = [(kind, units) for kind, units in ((NAL_VPS, vps), (NAL_SPS, sps), (NAL_PPS, pps)) if units]
    out[22] = len(arrays)
    for kind, units in arrays:
        out += bytes((0x80 | kind,)) + len(units).to_bytes(2, "big")  # array_completeness: all of them
        for unit in units:
            out += len(unit).to_bytes(2, "big") + unit
    return bytes(out)
