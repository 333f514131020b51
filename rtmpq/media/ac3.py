"""AC-3 and E-AC-3 (Dolby Digital, Plus): syncframe headers (ATSC A/52 5.4, E.1.2) and their
ISOBMFF configurations (dac3, dec3: ETSI TS 102 366 F.4, F.6).

E-RTMP carries them with no sequence header: every coded frame is a self-describing syncframe, so
the track is described from the first frame's header (and again if that header changes). E-AC-3
is described by its independent substream 0 (dependent substreams, as 7.1 uses, are not listed).
"""

from dataclasses import dataclass

from ..codec import BitReader
from ..errors import RemoteProtocolError

SAMPLE_RATES = (48000, 44100, 32000)
_CHANNELS = (2, 1, 2, 3, 3, 4, 4, 5)  # by acmod (1+1, 1/0, 2/0, 3/0, 2/1, 3/1, 2/2, 3/2)
MAX_FRMSIZECOD = 37
MAX_AC3_BSID = 8  # 9 and 10 are lower-rate variants; 16 is E-AC-3, which this does not carry
# ATSC A/52 Table 5.18: nominal bit rate (kbit/s) by frmsizecod >> 1, the frame's exact rate.
AC3_KBPS = (32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 576, 640)


class _Layout:
    """Sample rate and channel count from the fields both syncframe headers share."""

    __slots__ = ()
    fscod: int
    acmod: int
    lfeon: int

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATES[self.fscod]

    @property
    def channels(self) -> int:
        return _CHANNELS[self.acmod] + self.lfeon


@dataclass(frozen=True, slots=True)
class Ac3Header(_Layout):
    fscod: int
    frmsizecod: int
    bsid: int
    bsmod: int
    acmod: int
    lfeon: int

    codec_string = "ac-3"

    def max_bitrate(self) -> int:
        """The stream's bits per second (AC-3 frames of one frmsizecod are all the same size)."""
        return AC3_KBPS[self.frmsizecod >> 1] * 1000

    def dac3(self) -> bytes:
        """The body of the AC3SpecificBox: fscod, bsid, bsmod, acmod, lfeon, bit_rate_code, reserved."""
        bits = (self.fscod << 22 | self.bsid << 17 | self.bsmod << 14 | self.acmod << 11 | self.lfeon << 10
                | (self.frmsizecod >> 1) << 5)
        return bits.to_bytes(3, "big")

    @classmethod
    def parse(cls, frame) -> "Ac3Header":
        data = bytes(frame[:8])
        if len(data) < 7 or data[:2] != b"\x0b\x77":
            raise RemoteProtocolError("AC-3 frame without a syncword")
        r = BitReader(data[4:])  # after syncword and crc1
        fscod = r.read_bits(2)
        frmsizecod = r.read_bits(6)
        bsid = r.read_bits(5)
        bsmod = r.read_bits(3)
        acmod = r.read_bits(3)
        if fscod == 3 or frmsizecod > MAX_FRMSIZECOD:
            raise RemoteProtocolError(f"AC-3 fscod {fscod} / frmsizecod {frmsizecod} is reserved")
        if bsid > MAX_AC3_BSID:
            raise RemoteProtocolError(f"AC-3 bsid {bsid} is not AC-3 (E-AC-3 uses 16)")
        if acmod & 1 and acmod != 1:
            r.skip_bits(2)  # cmixlev
        if acmod & 4:
            r.skip_bits(2)  # surmixlev
        if acmod == 2:
            r.skip_bits(2)  # dsurmod
        return cls(fscod, frmsizecod, bsid, bsmod, acmod, r.read_bit())

    @classmethod
    def from_dac3(cls, dac3: bytes) -> "Ac3Header":
        if len(dac3) < 3:
            raise RemoteProtocolError("dac3 of fewer than 3 bytes")
        bits = int.from_bytes(dac3[:3], "big")
        return cls(bits >> 22 & 3, (bits >> 5 & 0x1F) << 1, bits >> 17 & 0x1F, bits >> 14 & 7, bits >> 11 & 7,
                   bits >> 10 & 1)


_BLOCKS = (1, 2, 3, 6)  # audio blocks of 256 samples per E-AC-3 frame, by numblkscod


@dataclass(frozen=True, slots=True)
class Eac3Header(_Layout):
    """The independent substream 0 of an E-AC-3 frame (ATSC A/52 E.1.2.2), as dec3 describes it."""

    fscod: int
    frame_bytes: int
    blocks: int
    bsid: int
    acmod: int
    lfeon: int

    codec_string = "ec-3"

    @property
    def kbps(self) -> int:
        return self.frame_bytes * 8 * self.sample_rate // (self.blocks * 256 * 1000)

    def max_bitrate(self, access_unit_bytes: int | None = None) -> int:
        """Bits per second of access units of ``access_unit_bytes`` (substream 0 and the dependent
        substreams 7.1 adds, one frame's time); of substream 0 alone by default."""
        return (access_unit_bytes or self.frame_bytes) * 8 * self.sample_rate // (self.blocks * 256)

    def dec3(self) -> bytes:
        """EC3SpecificBox body: data_rate, one independent substream, no dependent ones."""
        bits = (self.kbps << 27 | 0 << 24  # data_rate(13), num_ind_sub(3) = 1 - 1
                | self.fscod << 22 | self.bsid << 17 | self.acmod << 9 | self.lfeon << 8)
        return bits.to_bytes(5, "big")

    @classmethod
    def parse(cls, frame) -> "Eac3Header":
        data = bytes(frame[:8])
        if len(data) < 6 or data[:2] != b"\x0b\x77":
            raise RemoteProtocolError("E-AC-3 frame without a syncword")
        r = BitReader(data[2:])
        strmtyp = r.read_bits(2)
        substreamid = r.read_bits(3)
        frame_bytes = (r.read_bits(11) + 1) * 2
        fscod = r.read_bits(2)
        if fscod == 3:
            raise RemoteProtocolError("E-AC-3 at a reduced sample rate (fscod2) is not carried")
        blocks = _BLOCKS[r.read_bits(2)]
        acmod = r.read_bits(3)
        lfeon = r.read_bit()
        bsid = r.read_bits(5)
        if strmtyp != 0 or substreamid != 0:
            raise RemoteProtocolError("E-AC-3 frame does not start with independent substream 0")
        if not 11 <= bsid <= 16:
            raise RemoteProtocolError(f"E-AC-3 bsid {bsid} is not E-AC-3")
        return cls(fscod, frame_bytes, blocks, bsid, acmod, lfeon)

    @classmethod
    def from_dec3(cls, dec3: bytes) -> "Eac3Header":
        if len(dec3) < 5:
            raise RemoteProtocolError("dec3 of fewer than 5 bytes")
        bits = int.from_bytes(dec3[:5], "big")
        fscod = bits >> 22 & 3
        if fscod == 3:
            raise RemoteProtocolError("dec3 with a reserved fscod")
        kbps = bits >> 27
        return cls(fscod, kbps * 1000 * 6 * 256 // (8 * SAMPLE_RATES[fscod]), 6, bits >> 17 & 0x1F,
                   bits >> 9 & 7, bits >> 8 & 1)
