"""AAC AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1): object type, sample rate, channels."""

from dataclasses import dataclass

from ..codec import BitReader
from ..errors import RemoteProtocolError

SAMPLE_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
# Object types whose GASpecificConfig starts with frameLengthFlag (960-sample frames when set).
_GA_OBJECT_TYPES = (1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23)
# ISO/IEC 14496-3 4.5.3.1: a decoder's input buffer is 6144 bits per channel, so no frame of one
# channel is larger (SBR and PS data ride inside the core frame, at the core sample rate).
MAX_BITS_PER_CHANNEL_FRAME = 6144
# Channels by channel configuration; 0 (a program config element, not read here) takes 7.1's.
_CHANNEL_COUNTS = (8, 1, 2, 3, 4, 5, 6, 8)


@dataclass(frozen=True, slots=True)
class AudioSpecificConfig:
    object_type: int  # 2 = AAC LC, 5 = SBR (HE-AAC), 29 = PS
    sample_rate: int
    channels: int  # channel configuration (0: defined in-band; 1..7)
    frame_length: int  # samples per frame: 1024 or 960

    @property
    def codec_string(self) -> str:
        return f"mp4a.40.{self.object_type}"

    def max_bitrate(self) -> int:
        """Bits per second no stream of this configuration exceeds."""
        bits = MAX_BITS_PER_CHANNEL_FRAME * _CHANNEL_COUNTS[self.channels]
        return bits * self.sample_rate // self.frame_length

    @classmethod
    def parse(cls, data: bytes) -> "AudioSpecificConfig":
        if len(data) < 2:
            raise RemoteProtocolError(f"AudioSpecificConfig of {len(data)} bytes is too short")
        r = BitReader(data)
        object_type = r.read_bits(5)
        if object_type == 31:
            object_type = 32 + r.read_bits(6)
        if object_type == 0:
            raise RemoteProtocolError("AudioSpecificConfig object type 0 (null)")
        index = r.read_bits(4)
        if index == 15:
            sample_rate = r.read_bits(24)
        elif index < len(SAMPLE_RATES):
            sample_rate = SAMPLE_RATES[index]
        else:
            raise RemoteProtocolError(f"AudioSpecificConfig sampling frequency index {index} is reserved")
        if not 1000 <= sample_rate <= 192000:
            raise RemoteProtocolError(f"AudioSpecificConfig sample rate {sample_rate} out of range")
        channels = r.read_bits(4)
        if channels > 7:
            raise RemoteProtocolError(f"AudioSpecificConfig channel configuration {channels} is reserved")
        frame_length = 1024
        if object_type in _GA_OBJECT_TYPES and r.bits_left >= 1 and r.read_bit():
            frame_length = 960
        return cls(object_type, sample_rate, channels, frame_length)
