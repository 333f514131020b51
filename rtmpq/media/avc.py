"""H.264: the AVCDecoderConfigurationRecord (avcC) and the sequence parameter set.

Every field read from the bitstream is range-checked against ISO/IEC 14496-10 and 14496-15 (the
checks FFmpeg's h264_ps.c makes); anything out of range or truncated raises RemoteProtocolError
(specs/bad-inputs.md: CVE-2018-7752, CVE-2021-30022).
"""

from dataclasses import dataclass

from ..codec import BitReader, unescape_rbsp
from ..errors import RemoteProtocolError

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9

# Largest picture accepted from an SPS (8K is 7680x4320; the level limits stop below 8192x8192).
MAX_DIMENSION = 16384

_HIGH_PROFILES = (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135)

# H.264 Table A-1: MaxBR by level_idc, in units of the profile's factor below (level 1b, 128, is
# level_idc 9, or 11 with constraint_set3_flag in Baseline/Main/Extended).
MAX_BR = {9: 128, 10: 64, 11: 192, 12: 384, 13: 768, 20: 2000, 21: 4000, 22: 4000, 30: 10000, 31: 14000,
          32: 20000, 40: 20000, 41: 50000, 42: 50000, 50: 135000, 51: 240000, 52: 240000, 60: 240000,
          61: 480000, 62: 800000}
# H.264 Table A-2: cpbBrNalFactor (the NAL HRD's, which bounds every byte of the stream, not only
# the VCL ones) by profile_idc; profiles not listed take the largest, 4800.
CPB_BR_NAL_FACTOR = {66: 1200, 77: 1200, 88: 1200, 100: 1500, 110: 3600, 122: 4800, 244: 4800, 44: 4800}
_LEVEL_1B_PROFILES = (66, 77, 88)


def nal_unit_type(nal) -> int:
    return nal[0] & 0x1F


def is_idr(nal_units) -> bool:
    return any(len(u) and (u[0] & 0x1F) == NAL_IDR for u in nal_units)


@dataclass(frozen=True, slots=True)
class AvcConfig:
    profile: int
    compatibility: int
    level: int
    nal_length_size: int
    sps: tuple[bytes, ...]
    pps: tuple[bytes, ...]

    @property
    def codec_string(self) -> str:
        return f"avc1.{self.profile:02x}{self.compatibility:02x}{self.level:02x}"

    def max_bitrate(self) -> int:
        """Bits per second no stream of this profile and level exceeds (the avcC's profile, level
        and constraint flags are the SPS's own bytes); a level outside Table A-1 takes its top."""
        level = self.level
        if level == 11 and self.profile in _LEVEL_1B_PROFILES and self.compatibility & 0x10:
            level = 9  # constraint_set3_flag: level 1b
        factor = CPB_BR_NAL_FACTOR.get(self.profile, max(CPB_BR_NAL_FACTOR.values()))
        return MAX_BR.get(level, max(MAX_BR.values())) * factor

    @classmethod
    def parse(cls, data: bytes) -> "AvcConfig":
        data = bytes(data)
        if len(data) < 7:
            raise RemoteProtocolError(f"avcC of {len(data)} bytes is too short (at least 7)")
        if data[0] != 1:
            raise RemoteProtocolError(f"avcC configurationVersion {data[0]} (expected 1)")
        length_size = (data[4] & 0x03) + 1
        if length_size == 3:
            raise RemoteProtocolError("avcC lengthSizeMinusOne = 2 is not allowed")
        pos = 5
        sets: list[tuple[bytes, ...]] = []
        for kind, count_mask in (("SPS", 0x1F), ("PPS", 0xFF)):
            if pos >= len(data):
                raise RemoteProtocolError(f"avcC truncated before the {kind} count")
            count = data[pos] & count_mask
            pos += 1
            items = []
            for _ in range(count):
                if len(data) - pos < 2:
                    raise RemoteProtocolError(f"avcC {kind} length truncated")
                n = int.from_bytes(data[pos : pos + 2], "big")
                pos += 2
                if n == 0 or n > len(data) - pos:
                    raise RemoteProtocolError(f"avcC {kind} of {n} bytes runs past the end")
                items.append(data[pos : pos + n])
                pos += n
            sets.append(tuple(items))
        if not sets[0]:
            raise RemoteProtocolError("avcC carries no SPS")
        return cls(data[1], data[2], data[3], length_size, sets[0], sets[1])


def avcc_from_parameter_sets(sps, pps, nal_length_size: int = 4) -> bytes:
    """An avcC for these SPS and PPS NAL units (e.g. from an Annex-B stream, or the ones a key
    frame carries in-band): profile, constraint flags and level are the first SPS's bytes, and
    for the High profiles (14496-15 5.3.3.1.2) the chroma format and bit depths its fields. Raises
    RemoteProtocolError when the first SPS does not parse."""
    info = parse_sps(sps[0])
    record = bytearray((1, sps[0][1], sps[0][2], sps[0][3], 0xFC | (nal_length_size - 1), 0xE0 | len(sps)))
    for unit in sps:
        record += len(unit).to_bytes(2, "big") + unit
    record.append(len(pps))
    for unit in pps:
        record += len(unit).to_bytes(2, "big") + unit
    if info.profile_idc in _HIGH_PROFILES:
        record += bytes((0xFC | info.chroma_format_idc, 0xF8 | (info.bit_depth - 8),
                         0xF8 | (info.bit_depth_chroma - 8), 0))  # no SPS extensions
    return bytes(record)


@dataclass(frozen=True, slots=True)
class SpsInfo:
    profile_idc: int
    level_idc: int
    width: int
    height: int
    framerate: float | None  # from VUI timing info, when present
    chroma_format_idc: int
    bit_depth: int
    frame_mbs_only: bool
    bit_depth_chroma: int = 8


def _ue(r: BitReader, maximum: int, name: str) -> int:
    v = r.read_ue()
    if v > maximum:
        raise RemoteProtocolError(f"SPS {name} = {v} out of range (max {maximum})")
    return v


def _se(r: BitReader, low: int, high: int, name: str) -> int:
    v = r.read_se()
    if not low <= v <= high:
        raise RemoteProtocolError(f"SPS {name} = {v} out of range")
    return v


def _skip_scaling_list(r: BitReader, size: int) -> None:
    last = 8
    nxt = 8
    for _ in range(size):
        if nxt != 0:
            delta = _se(r, -128, 127, "delta_scale")
            nxt = (last + delta + 256) % 256
        last = nxt if nxt != 0 else last


def parse_sps(nal: bytes) -> SpsInfo:
    """Parse an SPS NAL unit (with its 1-byte NAL header)."""
    if len(nal) < 4 or (nal[0] & 0x1F) != NAL_SPS:
        raise RemoteProtocolError("not an SPS NAL unit")
    r = BitReader(unescape_rbsp(nal[1:]))
    profile_idc = r.read_bits(8)
    r.read_bits(8)  # constraint flags
    level_idc = r.read_bits(8)
    _ue(r, 31, "seq_parameter_set_id")
    chroma_format_idc = 1
    bit_depth = bit_depth_chroma = 8
    separate_colour_plane = 0
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = _ue(r, 3, "chroma_format_idc")
        if chroma_format_idc == 3:
            separate_colour_plane = r.read_bit()
        bit_depth = 8 + _ue(r, 6, "bit_depth_luma_minus8")
        bit_depth_chroma = 8 + _ue(r, 6, "bit_depth_chroma_minus8")
        r.read_bit()  # qpprime_y_zero_transform_bypass_flag
        if r.read_bit():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.read_bit():
                    _skip_scaling_list(r, 16 if i < 6 else 64)
    _ue(r, 12, "log2_max_frame_num_minus4")
    poc_type = _ue(r, 2, "pic_order_cnt_type")
    if poc_type == 0:
        _ue(r, 12, "log2_max_pic_order_cnt_lsb_minus4")
    elif poc_type == 1:
        r.read_bit()
        _se(r, -(2**31) + 1, 2**31 - 1, "offset_for_non_ref_pic")
        _se(r, -(2**31) + 1, 2**31 - 1, "offset_for_top_to_bottom_field")
        for _ in range(_ue(r, 255, "num_ref_frames_in_pic_order_cnt_cycle")):
            _se(r, -(2**31) + 1, 2**31 - 1, "offset_for_ref_frame")
    _ue(r, 16, "max_num_ref_frames")
    r.read_bit()  # gaps_in_frame_num_value_allowed_flag
    width_mbs = _ue(r, MAX_DIMENSION // 16 - 1, "pic_width_in_mbs_minus1") + 1
    height_units = _ue(r, MAX_DIMENSION // 16 - 1, "pic_height_in_map_units_minus1") + 1
    frame_mbs_only = r.read_bit()
    if not frame_mbs_only:
        r.read_bit()  # mb_adaptive_frame_field_flag
    r.read_bit()  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (2 - frame_mbs_only) * height_units * 16
    if r.read_bit():  # frame_cropping_flag
        if chroma_format_idc == 0 or separate_colour_plane:
            unit_x, unit_y = 1, 2 - frame_mbs_only
        else:
            unit_x = 2 if chroma_format_idc in (1, 2) else 1
            unit_y = (2 if chroma_format_idc == 1 else 1) * (2 - frame_mbs_only)
        left, right, top, bottom = (_ue(r, MAX_DIMENSION, "frame_crop_offset") for _ in range(4))
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
        if width <= 0 or height <= 0:
            raise RemoteProtocolError("SPS cropping leaves no picture")
    framerate = None
    if r.read_bit():  # vui_parameters_present_flag
        framerate = _vui_framerate(r)
    return SpsInfo(profile_idc, level_idc, width, height, framerate, chroma_format_idc, bit_depth, bool(frame_mbs_only),
                   bit_depth_chroma)


def _vui_framerate(r: BitReader) -> float | None:
    if r.read_bit():  # aspect_ratio_info_present_flag
        if r.read_bits(8) == 255:  # Extended_SAR
            r.skip_bits(32)
    if r.read_bit():  # overscan_info_present_flag
        r.read_bit()
    if r.read_bit():  # video_signal_type_present_flag
        r.skip_bits(4)
        if r.read_bit():  # colour_description_present_flag
            r.skip_bits(24)
    if r.read_bit():  # chroma_loc_info_present_flag
        _ue(r, 5, "chroma_sample_loc_type_top_field")
        _ue(r, 5, "chroma_sample_loc_type_bottom_field")
    if r.read_bit():  # timing_info_present_flag
        units = r.read_bits(32)
        scale = r.read_bits(32)
        if units and scale:
            return round(scale / (2 * units), 3)
    return None
