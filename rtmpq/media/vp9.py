"""VP9: the VP codec configuration record (vpcC, "VP Codec ISO Media File Format Binding" 2.2) and
the uncompressed header of key frames (VP9 bitstream spec 6.2), read as far as the frame size.

E-RTMP's VP9 sequence start carries the vpcC box body (version 1, flags, record); the picture size
is not in it, so it comes from the first key frame.
"""

from dataclasses import dataclass

from ..codec import BitReader
from ..errors import RemoteProtocolError

VPCC_SIZE = 4 + 8  # version + flags, then the record up to codecIntializationDataSize
_SYNC_CODE = 0x498342
_CS_RGB = 7
# VP9 levels (the binding's level table, webmproject.org/vp9/levels): max bitrate in kbit/s by the
# vpcC level; 0 (not given) and unknown levels take the top.
MAX_BITRATE_KBPS = {10: 200, 11: 800, 20: 1800, 21: 3600, 30: 7200, 31: 12000, 40: 18000, 41: 30000,
                    50: 60000, 51: 120000, 52: 180000, 60: 180000, 61: 240000, 62: 480000}


@dataclass(frozen=True, slots=True)
class Vp9Config:
    profile: int
    level: int
    bit_depth: int

    @property
    def codec_string(self) -> str:
        return f"vp09.{self.profile:02d}.{self.level:02d}.{self.bit_depth:02d}"

    def max_bitrate(self) -> int:
        """Bits per second no stream of this level exceeds."""
        return MAX_BITRATE_KBPS.get(self.level, max(MAX_BITRATE_KBPS.values())) * 1000

    @classmethod
    def parse(cls, data) -> "Vp9Config":
        data = bytes(data)
        if len(data) < VPCC_SIZE:
            raise RemoteProtocolError(f"vpcC of {len(data)} bytes is too short (at least {VPCC_SIZE})")
        if data[0] != 1:
            raise RemoteProtocolError(f"vpcC version {data[0]} (expected 1)")
        profile, level, bit_depth = data[4], data[5], data[6] >> 4
        if profile > 3 or bit_depth not in (8, 10, 12):
            raise RemoteProtocolError(f"vpcC profile {profile} / bit depth {bit_depth} is invalid")
        return cls(profile, level, bit_depth)


def _header_start(r: BitReader) -> tuple[int, bool, bool]:
    """(profile, show_existing_frame, key frame) from the start of an uncompressed header."""
    if r.read_bits(2) != 2:
        raise RemoteProtocolError("VP9 frame without its frame marker")
    profile = r.read_bit() | r.read_bit() << 1
    if profile == 3:
        r.skip_bits(1)
    if r.read_bit():  # show_existing_frame
        return profile, True, False
    return profile, False, r.read_bit() == 0  # frame_type 0 = KEY_FRAME


def is_key_frame(frame) -> bool:
    """True when the frame (the first of a superframe) is a VP9 key frame."""
    if not len(frame):
        return False
    _, _, key = _header_start(BitReader(bytes(frame[:2])))
    return key


def key_frame_size(frame) -> tuple[int, int]:
    """(width, height) of a key frame. Raises RemoteProtocolError for anything else."""
    r = BitReader(bytes(frame[:16]))
    profile, _, key = _header_start(r)
    if not key:
        raise RemoteProtocolError("not a VP9 key frame")
    r.skip_bits(2)  # show_frame, error_resilient_mode
    if r.read_bits(24) != _SYNC_CODE:
        raise RemoteProtocolError("VP9 key frame without its sync code")
    if profile >= 2:
        r.skip_bits(1)  # ten_or_twelve_bit
    if r.read_bits(3) != _CS_RGB:
        r.skip_bits(1)  # color_range
        if profile in (1, 3):
            r.skip_bits(3)  # subsampling_x, subsampling_y, reserved_zero
    elif profile in (1, 3):
        r.skip_bits(1)
    return r.read_bits(16) + 1, r.read_bits(16) + 1
