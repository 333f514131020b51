"""AC-3 (Dolby Digital): the syncframe header (ATSC A/52 5.3/5.4) and its ISOBMFF configuration
(dac3, ETSI TS 102 366 F.4).

E-RTMP carries AC-3 with no sequence header: every coded frame is a self-describing syncframe, so
the track is described from the first frame's header (and again if that header changes).
"""

from dataclasses import dataclass

from ..codec import BitReader
from ..errors import RemoteProtocolError

SAMPLE_RATES = (48000, 44100, 32000)
_CHANNELS = (2, 1, 2, 3, 3, 4, 4, 5)  # by acmod (1+1, 1/0, 2/0, 3/0, 2/1, 3/1, 2/2, 3/2)
MAX_FRMSIZECOD = 37
MAX_AC3_BSID = 8  # 9 and 10 are lower-rate variants; 16 is E-AC-3, which this does not carry


@dataclass(frozen=True, slots=True)
class Ac3Header:
    fscod: int
    frmsizecod: int
    bsid: int
    bsmod: int
    acmod: int
    lfeon: int

    codec_string = "ac-3"

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATES[self.fscod]

    @property
    def channels(self) -> int:
        return _CHANNELS[self.acmod] + self.lfeon

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
