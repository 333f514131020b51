"""What a subscriber needs to decode from its first frame: codecs, configs, sizes, rates.

Serialised as JSON in the shape of an MSF catalog (specs/draft-ietf-moq-msf.md): a ``tracks`` list
with ``name``, ``packaging`` "loc", ``codec``, ``width``/``height``/``framerate`` or
``samplerate``/``channelConfig``, plus rtmpq fields for the decoder configuration (``initData``:
base64 avcC or AudioSpecificConfig) and ``timescale``.
"""

import base64
import json
from dataclasses import dataclass, field, replace

from .frames import AUDIO, SOURCE_TIMESCALE, VIDEO


@dataclass(frozen=True, slots=True)
class TrackInfo:
    name: str  # "video", "audio", or a rendition such as "video-720p"
    kind: str  # VIDEO, AUDIO or DATA
    codec: str  # RFC 6381 string: "avc1.64001f", "mp4a.40.2"
    init_data: bytes = b""  # avcC for AVC, AudioSpecificConfig for AAC
    timescale: int = SOURCE_TIMESCALE
    width: int | None = None
    height: int | None = None
    framerate: float | None = None
    bitrate: int | None = None
    nal_length_size: int | None = None  # AVC only: 1, 2 or 4
    sample_rate: int | None = None
    channels: int | None = None
    render_group: int = 1  # tracks that play together (MSF renderGroup)
    alt_group: int | None = None  # renditions of the same content (MSF altGroup)

    def to_msf(self) -> dict:
        out: dict = {
            "name": self.name,
            "packaging": "loc",
            "codec": self.codec,
            "renderGroup": self.render_group,
            "timescale": self.timescale,
            "role": self.kind,
        }
        if self.alt_group is not None:
            out["altGroup"] = self.alt_group
        if self.init_data:
            out["initData"] = base64.b64encode(self.init_data).decode("ascii")
        for key, value in (
            ("width", self.width),
            ("height", self.height),
            ("framerate", self.framerate),
            ("bitrate", self.bitrate),
            ("samplerate", self.sample_rate),
            ("channelConfig", None if self.channels is None else str(self.channels)),
            ("nalLengthSize", self.nal_length_size),
        ):
            if value is not None:
                out[key] = value
        return out

    @classmethod
    def from_msf(cls, obj: dict) -> "TrackInfo":
        channels = obj.get("channelConfig")
        return cls(
            name=obj["name"],
            kind=obj.get("role") or (VIDEO if "width" in obj else AUDIO),
            codec=obj.get("codec", ""),
            init_data=base64.b64decode(obj["initData"]) if obj.get("initData") else b"",
            timescale=int(obj.get("timescale", SOURCE_TIMESCALE)),
            width=obj.get("width"),
            height=obj.get("height"),
            framerate=obj.get("framerate"),
            bitrate=obj.get("bitrate"),
            nal_length_size=obj.get("nalLengthSize"),
            sample_rate=obj.get("samplerate"),
            channels=int(channels) if channels is not None else None,
            render_group=int(obj.get("renderGroup", 1)),
            alt_group=obj.get("altGroup"),
        )


@dataclass(frozen=True, slots=True)
class Catalog:
    broadcast: str  # "live/<key>"
    tracks: tuple[TrackInfo, ...] = ()
    version: int = 1
    metadata: dict = field(default_factory=dict, compare=False)  # onMetaData, for information

    def track(self, name: str) -> TrackInfo | None:
        for t in self.tracks:
            if t.name == name:
                return t
        return None

    def with_track(self, info: TrackInfo) -> "Catalog":
        """A new catalog with ``info`` added or replacing the track of the same name."""
        others = tuple(t for t in self.tracks if t.name != info.name)
        ordered = tuple(sorted(others + (info,), key=lambda t: (t.kind != VIDEO, t.name)))
        return replace(self, tracks=ordered, version=self.version + 1)

    def to_json(self) -> bytes:
        doc = {
            "version": 1,
            "generatedAt": None,
            "broadcast": self.broadcast,
            "catalogVersion": self.version,
            "tracks": [t.to_msf() for t in self.tracks],
        }
        doc = {k: v for k, v in doc.items() if v is not None}
        return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> "Catalog":
        doc = json.loads(data)
        return cls(
            broadcast=doc.get("broadcast", ""),
            tracks=tuple(TrackInfo.from_msf(t) for t in doc.get("tracks", ())),
            version=int(doc.get("catalogVersion", 1)),
        )
