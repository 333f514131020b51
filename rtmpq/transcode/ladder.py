"""The ABR ladder: which rungs exist, their sizes, bitrates and the live x264 settings.

Every default a user might change is named here with its reason; ``[transcode]`` in
rtmpq/config.py chooses among them.
"""

import re
from dataclasses import dataclass

from ..errors import RtmpqError

# Rungs by height and their bitrates (kbit/s): the usual live ladder for 30 fps H.264 (Apple's HLS
# authoring spec and YouTube's live ingest tables sit around these for 720p/480p/360p).
RUNG_BITRATES_KBPS = {1080: 4500, 720: 2500, 480: 1200, 360: 700, 240: 400}
DEFAULT_LADDER = "720p,480p,360p"
# VBV buffer per rung, in seconds of its bitrate: room for the IDR every source group forces
# without letting the rate swing over more than about one GoP (maxrate = the bitrate).
VBV_BUFFER_SECONDS = 2.0
# x264 speed/quality trade-off: veryfast keeps 720p->480p+360p inside one core at 30 fps.
X264_PRESET = "veryfast"
# libx264's presets, fastest first ([transcode] preset and presets take one of these).
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")
# zerolatency: no lookahead, no frame threads, so a frame leaves the encoder as it goes in.
X264_TUNE = "zerolatency"
# Key frames come from the source's groups (forced IDR at each group start); this backstop (in
# frames) only matters when the source sends no key frame for this long (10 s at 30 fps).
GOP_BACKSTOP_FRAMES = 300
# Frame rate assumed for rate control when the catalog gives none.
DEFAULT_FRAMERATE = 30.0
# Decoded frames queued per rung between the decoder and the rung's encoder (half a second at
# 30 fps: rides through scheduling hiccups on a busy host; each holds a decoded source picture,
# 1.4 MB at 720p): a rung that falls this far behind drops to the next group boundary instead of
# stalling the others.
RUNG_QUEUE_FRAMES = 15
# Source frames queued between the event loop and the decoder (at most one GoP of 60 fps, 4 s).
DECODE_QUEUE_FRAMES = 240
# A rung whose last subscriber left keeps encoding this long (seconds), so a player switching
# away and back, or a subscriber reconnecting, finds it running.
IDLE_STOP_SECONDS = 5.0
# Rung track names: the source track's name + "-" + the rung's name ("video-480p").
_RUNG = re.compile(r"^(\d{3,4})p$")


class LadderError(RtmpqError, ValueError):
    """A ladder setting that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Rung:
    name: str  # "480p"
    height: int
    bitrate: int  # bits per second

    @property
    def vbv_bufsize(self) -> int:
        return int(self.bitrate * VBV_BUFFER_SECONDS)

    def track(self, source_track: str) -> str:
        return f"{source_track}-{self.name}"

    def size_for(self, src_width: int, src_height: int) -> tuple[int, int]:
        """(width, height) with the source's aspect and this rung's "height" on the picture's short
        side (a portrait picture's width: "480p" of a phone's 720x1280 is 480x854, the pixels its
        bitrate is meant for), both even (4:2:0)."""
        short = self.height - self.height % 2
        if src_width < src_height:
            return short, max(round(src_height * self.height / src_width / 2) * 2, 2)
        return max(round(src_width * self.height / src_height / 2) * 2, 2), short


def parse_ladder(text: str, bitrates: dict[str, str] | None = None) -> tuple[Rung, ...]:
    """``"720p,480p,360p"`` -> rungs, highest first; ``bitrates`` ({"480p": "1000"}, kbit/s)
    overrides the defaults. An empty text is no ladder."""
    rungs: dict[int, Rung] = {}
    overrides = dict(bitrates or {})
    for item in (p.strip().lower() for p in text.split(",")):
        if not item:
            continue
        m = _RUNG.match(item)
        if m is None:
            raise LadderError(f"transcode.ladder: {item!r} is not a rung (write heights such as 720p,480p,360p)")
        height = int(m[1])
        if not 64 <= height <= 4320:
            raise LadderError(f"transcode.ladder: {item!r} is out of range (64p to 4320p)")
        kbps = overrides.pop(item, None)
        if kbps is None:
            kbps = RUNG_BITRATES_KBPS.get(height) or _interpolated_kbps(height)
        try:
            kbps = int(kbps)
        except ValueError:
            raise LadderError(f"transcode.bitrates: {item} = {kbps!r} is not kbit/s") from None
        if kbps <= 0:
            raise LadderError(f"transcode.bitrates: {item} must be positive")
        rungs[height] = Rung(item, height, kbps * 1000)
    ordered = tuple(sorted(rungs.values(), key=lambda r: -r.height))
    if overrides:
        raise LadderError(f"transcode.bitrates: {', '.join(overrides)} is not in the ladder "
                          f"({','.join(r.name for r in ordered) or 'none'})")
    return ordered


def _interpolated_kbps(height: int) -> int:
    """A rung not in the table: bits scale with the pixel count from the nearest known rung."""
    near = min(RUNG_BITRATES_KBPS, key=lambda h: abs(h - height))
    return max(100, int(RUNG_BITRATES_KBPS[near] * (height / near) ** 2))


def rungs_for_source(rungs: tuple[Rung, ...], src_short_side: int) -> tuple[Rung, ...]:
    """The rungs worth making for a source: those smaller than it, by the picture's short side
    (its height, or a portrait picture's width; a rung as large as the source would spend CPU to
    make the same picture worse)."""
    return tuple(r for r in rungs if r.height < src_short_side)


def x264_options(rung: Rung, preset: str = X264_PRESET) -> dict[str, str]:
    """Private libx264 options for a rung (the rest are codec-context fields, see coder.py)."""
    return {
        "preset": preset,
        "tune": X264_TUNE,
        # an IDR (not just an I frame) where we set pict_type I: players may join and switch there
        "forced-idr": "1",
        # no scene-cut key frames (key frames only at source group starts), closed GoPs
        "x264-params": "scenecut=0:open-gop=0",
    }
