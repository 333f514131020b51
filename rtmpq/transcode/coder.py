"""PyAV decode of one source video track and libx264 encode of one rung.

Both run on worker threads: PyAV releases the GIL in decode, ``sws_scale`` and encode. Timestamps
stay in the source track's timescale (1/1000 for RTMP sources) end to end, so a rung frame has
the pts of the source frame it was made from.
"""

import logging
from fractions import Fraction

import av
from av.codec.codec import UnknownCodecError
from av.video.frame import PictureType
from av.video.reformatter import Interpolation, VideoReformatter

from ..codec import find_annexb_units
from ..errors import RtmpqError
from ..media.avc import NAL_IDR, NAL_PPS, NAL_SPS, avcc_from_parameter_sets
from ..media.catalog import TrackInfo
from .ladder import DEFAULT_FRAMERATE, GOP_BACKSTOP_FRAMES, X264_PRESET, Rung, x264_options

log = logging.getLogger("rtmpq.transcode")

# PyAV decoders per catalog codec prefix, the first one this FFmpeg has is used (the configuration
# record goes in as extradata). AV1: FFmpeg's native "av1" decodes only through a hardware
# accelerator (without one every packet fails with ENOSYS), so dav1d or libaom come first.
DECODERS = {"avc1": ("h264",), "avc3": ("h264",), "hvc1": ("hevc",), "hev1": ("hevc",),
            "av01": ("libdav1d", "libaom-av1", "av1"), "vp09": ("vp9",)}
# Decoder options per decoder: dav1d holds frames back for its frame threads by default (a delay
# of several frames per rung frame); one frame in, one out, as the other decoders with SLICE threads.
DECODER_OPTIONS = {"libdav1d": {"max_frame_delay": "1"}}
# Output length size of rung NAL units (the avcC says 4).
NAL_LENGTH_SIZE = 4
# AV_CODEC_FLAG_GLOBAL_HEADER: SPS/PPS in extradata (-> the rung's avcC), not in every IDR.
_GLOBAL_HEADER = 1 << 22


class CoderError(RtmpqError):
    """A decoder or encoder that cannot be opened or fed."""


class SourceDecoder:
    """One PyAV decoder for one source video track, opened from the catalog's init data."""

    def __init__(self, info: TrackInfo) -> None:
        name = _decoder_name(info.codec)
        try:
            ctx = av.CodecContext.create(name, "r")
            if info.init_data:
                ctx.extradata = bytes(info.init_data)
            ctx.thread_type = "SLICE"  # frame threads would add a frame of delay per thread
            ctx.options = DECODER_OPTIONS.get(name, {})
            ctx.open()
        except av.FFmpegError as exc:
            raise CoderError(f"cannot open the {name} decoder: {exc}") from None
        self.ctx = ctx
        self.info = info
        self.time_base = Fraction(1, info.timescale)

    def decode(self, payload, pts: int, dts: int, keyframe: bool) -> list:
        """Decoded frames (display order, with pts) for one access unit; raises av.FFmpegError."""
        packet = av.Packet(bytes(payload))
        packet.pts, packet.dts, packet.time_base = pts, dts, self.time_base
        if keyframe:
            packet.is_keyframe = True
        return self.ctx.decode(packet)

    def flush(self) -> list:
        try:
            return self.ctx.decode(None)
        except av.FFmpegError:
            return []


def _decoder_name(codec: str) -> str:
    """The first decoder of ``DECODERS`` for ``codec`` that this FFmpeg (PyAV's) has."""
    for name in DECODERS.get(codec.split(".")[0], ()):
        try:
            av.Codec(name, "r")
        except UnknownCodecError:  # not in this FFmpeg build
            continue
        return name
    raise CoderError(f"no decoder for codec {codec!r}")


def annexb_to_length_prefixed(data: bytes) -> tuple[bytes, bool]:
    """(NAL units each with a 4-byte length, contains an IDR) from an Annex-B access unit; the
    parameter sets are left out (they are in the avcC)."""
    out = bytearray()
    idr = False
    for start, end in find_annexb_units(data):
        kind = data[start] & 0x1F
        if kind in (NAL_SPS, NAL_PPS):
            continue
        idr = idr or kind == NAL_IDR
        out += (end - start).to_bytes(NAL_LENGTH_SIZE, "big")
        out += data[start:end]
    return bytes(out), idr


class RungEncoder:
    """A persistent libx264 encoder (rate control carries across groups) with one reusable
    VideoReformatter, for one rung of one source track."""

    def __init__(self, rung: Rung, width: int, height: int, framerate: float | None, timescale: int,
                 preset: str = X264_PRESET) -> None:
        self.rung = rung
        self.width, self.height = width, height
        self.framerate = framerate or DEFAULT_FRAMERATE
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, timescale)
        ctx.framerate = Fraction(self.framerate).limit_denominator(1001)
        ctx.bit_rate = rung.bitrate
        ctx.gop_size = GOP_BACKSTOP_FRAMES
        ctx.max_b_frames = 0  # dts = pts, and no reordering delay
        ctx.flags |= _GLOBAL_HEADER
        # VBV: maxrate = the rung's bitrate (generic codec options, as ffmpeg's -maxrate/-bufsize)
        ctx.options = {**x264_options(rung, preset), "maxrate": str(rung.bitrate), "bufsize": str(rung.vbv_bufsize)}
        try:
            ctx.open()
        except av.FFmpegError as exc:
            raise CoderError(f"cannot open libx264 for {rung.name}: {exc}") from None
        self.ctx = ctx
        self.reformatter = VideoReformatter()
        self.frames_encoded = 0
        sps = pps = None
        for start, end in find_annexb_units(bytes(ctx.extradata or b"")):
            unit = bytes(ctx.extradata[start:end])
            kind = unit[0] & 0x1F
            if kind == NAL_SPS and sps is None:
                sps = unit
            elif kind == NAL_PPS and pps is None:
                pps = unit
        if sps is None or pps is None:
            raise CoderError(f"libx264 gave no SPS/PPS for {rung.name}")
        self.avcc = avcc_from_parameter_sets([sps], [pps], NAL_LENGTH_SIZE)
        self.codec = f"avc1.{sps[1]:02x}{sps[2]:02x}{sps[3]:02x}"

    def encode(self, frame, idr: bool) -> list[tuple[int, bytes, bool]]:
        """(pts, length-prefixed access unit, is IDR) for what the encoder gives back for
        ``frame``; ``idr`` forces this frame to an IDR (the first frame of a source group)."""
        out = self.reformatter.reformat(frame, width=self.width, height=self.height, format="yuv420p",
                                        interpolation=Interpolation.BILINEAR)
        # decoded frames carry the decoder's picture type into the encoder: set I at a group
        # start and clear it everywhere else, or the source's I frames become extra key frames
        out.pict_type = PictureType.I if idr else PictureType.NONE
        out.pts = frame.pts
        out.time_base = self.ctx.time_base
        packets = self.ctx.encode(out)
        self.frames_encoded += 1
        return [self._packet(p) for p in packets]

    def _packet(self, packet) -> tuple[int, bytes, bool]:
        data, idr = annexb_to_length_prefixed(bytes(packet))
        return packet.pts, data, idr

    def info(self, source: TrackInfo) -> TrackInfo:
        """The rung's catalog track: a rendition of ``source`` (same altGroup and renderGroup)."""
        return TrackInfo(
            name=self.rung.track(source.name), kind=source.kind, codec=self.codec, init_data=self.avcc,
            timescale=source.timescale, width=self.width, height=self.height, framerate=source.framerate or self.framerate,
            bitrate=self.rung.bitrate, nal_length_size=NAL_LENGTH_SIZE, render_group=source.render_group,
            alt_group=source.alt_group if source.alt_group is not None else 1, source=source.name,
        )
