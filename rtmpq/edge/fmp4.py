"""CMAF (fragmented MP4) boxes: the init segment and one fragment (moof + mdat) per LL-HLS part.

A box writer of our own rather than PyAV's muxer: LL-HLS parts must be cut at exact sample
boundaries we choose, with an exact tfdt and per-sample durations and composition offsets taken
from the source timestamps, and each part must be a self-contained moof+mdat that we can serve
the moment it is complete. A muxer that decides fragmentation itself gives none of that control.

Samples keep the source timescale (milliseconds for RTMP sources), so no timestamp is rounded.
AVC and HEVC samples are the length-prefixed NAL units of the source frame (the layout avcC/hvcC
declare), AV1 samples its temporal unit of OBUs (av1C), AAC, Opus, AC-3 and E-AC-3 samples raw frames
(esds, dOps, dac3, dec3).
"""

import re
import struct
from dataclasses import dataclass

from ..media.catalog import TrackInfo
from ..media.frames import VIDEO
from ..media.ac3 import Ac3Header, Eac3Header
from ..media.opus import OPUS_SAMPLE_RATE, OpusHead

# sample_flags (ISO/IEC 14496-12 8.8.3.1): a sync sample depends on nothing; others on earlier ones
SYNC_SAMPLE_FLAGS = 0x02000000
NON_SYNC_SAMPLE_FLAGS = 0x01010000


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)


def _esds(asc: bytes, bitrate: int = 0) -> bytes:
    def descriptor(tag: int, payload: bytes) -> bytes:
        n = len(payload)
        size = bytes((0x80 | (n >> 21) & 0x7F, 0x80 | (n >> 14) & 0x7F, 0x80 | (n >> 7) & 0x7F, n & 0x7F))
        return bytes((tag,)) + size + payload

    decoder_specific = descriptor(0x05, asc)
    decoder_config = descriptor(0x04, bytes((0x40, 0x15)) + b"\x00\x00\x00" + struct.pack(">II", bitrate, bitrate)
                                + decoder_specific)
    sl_config = descriptor(0x06, b"\x02")
    return full_box(b"esds", 0, 0, descriptor(0x03, b"\x00\x01\x00" + decoder_config + sl_config))


# Sample entry and configuration box per codec (the catalog's codec string prefix).
VIDEO_ENTRIES = {"avc1": (b"avc1", b"avcC"), "hvc1": (b"hvc1", b"hvcC"), "av01": (b"av01", b"av1C"),
                 "vp09": (b"vp09", b"vpcC")}  # the catalog's vpcC is the full box body (version 1)


def _sample_entry(info: TrackInfo) -> bytes:
    if info.kind == VIDEO:
        entry, config = VIDEO_ENTRIES[info.codec[:4]]
        return box(
            entry, bytes(6), struct.pack(">H", 1), bytes(16),
            struct.pack(">HH", info.width or 0, info.height or 0),
            struct.pack(">II", 0x00480000, 0x00480000), bytes(4), struct.pack(">H", 1), bytes(32),
            struct.pack(">Hh", 0x18, -1), box(config, info.init_data),
        )
    if info.codec == "opus":
        head = OpusHead.parse(info.init_data)
        return box(b"Opus", bytes(6), struct.pack(">H", 1), bytes(8),
                   struct.pack(">HHHH", head.channels, 16, 0, 0), struct.pack(">I", OPUS_SAMPLE_RATE << 16),
                   box(b"dOps", head.dops()))
    if info.codec in ("ac-3", "ec-3"):
        ac3 = info.codec == "ac-3"
        head = Ac3Header.from_dac3(info.init_data) if ac3 else Eac3Header.from_dec3(info.init_data)
        return box(info.codec.encode(), bytes(6), struct.pack(">H", 1), bytes(8), struct.pack(">HHHH", 2, 16, 0, 0),
                   struct.pack(">I", head.sample_rate << 16), box(b"dac3" if ac3 else b"dec3", info.init_data))
    return box(
        b"mp4a", bytes(6), struct.pack(">H", 1), bytes(8),
        struct.pack(">HHHH", info.channels or 2, 16, 0, 0), struct.pack(">I", (info.sample_rate or 48000) << 16 if (info.sample_rate or 0) < 65536 else 0),
        _esds(info.init_data),
    )


# A codec string as RFC 6381 writes them (avc1.64001f, hvc1.1.6.L93.B0, mp4a.40.2, opus, ec-3). A
# MoQ publisher names its tracks' codecs in its catalog, and the string goes into the playlists
# (CODECS="..."): one with a quote or a line break would write lines of its choosing there.
_CODEC_STRING = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def can_package(info: TrackInfo) -> bool:
    """Whether this writer has a sample entry for the track's codec (named as RFC 6381 does)."""
    if not _CODEC_STRING.fullmatch(info.codec):
        return False
    if info.kind == VIDEO:
        return info.codec[:4] in VIDEO_ENTRIES
    return info.codec.startswith("mp4a") or info.codec in ("opus", "ac-3", "ec-3")


def _trak(track_id: int, info: TrackInfo) -> bytes:
    video = info.kind == VIDEO
    tkhd = full_box(b"tkhd", 0, 0x3, struct.pack(">IIIII", 0, 0, track_id, 0, 0), bytes(8),
                    struct.pack(">hhhH", 0, 0, 0 if video else 0x0100, 0), _MATRIX,
                    struct.pack(">II", (info.width or 0) << 16, (info.height or 0) << 16) if video else bytes(8))
    mdhd = full_box(b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, info.timescale, 0), struct.pack(">HH", 0x55C4, 0))
    handler = b"vide" if video else b"soun"
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), b"rtmpq\x00")
    media_header = full_box(b"vmhd", 0, 1, bytes(8)) if video else full_box(b"smhd", 0, 0, bytes(4))
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(b"stbl", full_box(b"stsd", 0, 0, struct.pack(">I", 1), _sample_entry(info)),
               full_box(b"stts", 0, 0, bytes(4)), full_box(b"stsc", 0, 0, bytes(4)),
               full_box(b"stsz", 0, 0, bytes(8)), full_box(b"stco", 0, 0, bytes(4)))
    return box(b"trak", tkhd, box(b"mdia", mdhd, hdlr, box(b"minf", media_header, dinf, stbl)))


def init_segment(tracks: list[TrackInfo]) -> bytes:
    """ftyp + moov for these tracks; track ids are 1, 2, ... in list order."""
    ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6cmfcisomdash")
    mvhd = full_box(b"mvhd", 0, 0, struct.pack(">IIII", 0, 0, 1000, 0), struct.pack(">IH", 0x00010000, 0x0100),
                    bytes(10), _MATRIX, bytes(24), struct.pack(">I", len(tracks) + 1))
    traks = [_trak(i + 1, t) for i, t in enumerate(tracks)]
    trexs = [full_box(b"trex", 0, 0, struct.pack(">IIIII", i + 1, 1, 0, 0, 0)) for i in range(len(tracks))]
    return ftyp + box(b"moov", mvhd, *traks, box(b"mvex", *trexs))


@dataclass(slots=True)
class Sample:
    dts: int
    pts: int
    duration: int
    keyframe: bool
    data: bytes | memoryview


def fragment(sequence: int, runs: list[tuple[int, list[Sample]]]) -> bytes:
    """moof + mdat holding, for each (track id, samples), one traf and its samples in order."""
    trafs = []
    offsets_at = []  # position of each trun's data_offset field inside the moof
    moof_size = 8 + 16  # moof header + mfhd
    for track_id, samples in runs:
        if not samples:
            continue
        tfhd = full_box(b"tfhd", 0, 0x020000, struct.pack(">I", track_id))
        tfdt = full_box(b"tfdt", 1, 0, struct.pack(">Q", samples[0].dts))
        entries = b"".join(
            struct.pack(">IIIi", s.duration, len(s.data), SYNC_SAMPLE_FLAGS if s.keyframe else NON_SYNC_SAMPLE_FLAGS,
                        s.pts - s.dts)
            for s in samples
        )
        trun = full_box(b"trun", 1, 0x000F01, struct.pack(">Ii", len(samples), 0), entries)
        traf = box(b"traf", tfhd, tfdt, trun)
        offsets_at.append(moof_size + 8 + len(tfhd) + len(tfdt) + 16)
        moof_size += len(traf)
        trafs.append((traf, samples))
    moof = bytearray(box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence)), *(t for t, _ in trafs)))
    data_pos = len(moof) + 8
    for (_, samples), at in zip(trafs, offsets_at, strict=True):
        struct.pack_into(">i", moof, at, data_pos)
        data_pos += sum(len(s.data) for s in samples)
    mdat_size = data_pos - len(moof)
    chunks = [bytes(moof), struct.pack(">I", mdat_size), b"mdat"]
    for _, samples in trafs:
        chunks.extend(s.data for s in samples)  # views: the join below is the one copy
    return b"".join(chunks)
