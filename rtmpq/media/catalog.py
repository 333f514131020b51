"""What a subscriber needs to decode from its first frame: codecs, configs, sizes, rates.

Serialised as an MSF catalog (specs/draft-ietf-moq-msf.md, "version": "draft-01" as its examples
write it), fields in the draft's order:

- root: ``version``, ``generatedAt`` (ms since the epoch, live catalogs only), ``isComplete`` (only
  when true), ``tracks``, then ``initDataList`` (after the tracks, as the draft asks): one
  ``{"id", "type": "inline", "data": base64}`` entry per track with a decoder configuration (avcC,
  hvcC, av1C, OpusHead or AudioSpecificConfig), which the track names in ``initRef``.
- per track: ``name``, ``packaging`` "loc", ``isLive``, ``role``, ``renderGroup``, ``altGroup``,
  ``initRef``, ``codec`` (WebCodecs registry strings: ``avc1.64001f``, ``hvc1.1.6.L93.B0``,
  ``av01.0.04M.08``, ``mp4a.40.2``, ``opus``), ``framerate``, ``timescale``, ``bitrate``, ``width``,
  ``height``, ``samplerate``, ``channelConfig`` (a string).

Every audio and video track rtmpq writes has ``bitrate`` (MSF: MUST): the publisher's onMetaData
rate, a transcoder rung's maxrate, else the upper bound the codec configuration's level implies.

Private fields only where MSF has no place: ``broadcast`` (the broadcast's name),
``rtmpq.catalogVersion`` (our counter of catalog changes), ``rtmpq.bitrateBound`` (true when
``bitrate`` is only that level bound, far above what the encoder sends) and, on a transcoder rung's
track, ``rtmpq.source`` (the track it is made from: MSF ``depends`` would mean a decoder needs that
track). The AVC/HEVC NAL length size is not sent: it is read back from the configuration record.

``rtmpq.notCarried`` (root) lists what the publisher sends in a codec rtmpq does not carry, so
nodes that get the broadcast over MoQ say why it has nothing (or no audio) to play:
``[{"kind": "audio", "codec": "MP3", "flv": ".mp3", "carried": "AAC, Opus, AC-3, E-AC-3",
"ffmpeg": "-c:a aac"}]``. Such a track has no entry in ``tracks`` (nothing can be subscribed), so a
publish of MP3 alone has a catalog with an empty ``tracks`` array and this field. MSF lets a
producer add fields whose names do not collide with its own, and its parsers ignore what they do
not understand; an entry rtmpq cannot read is ignored the same way (docs/interop.md).
"""

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field, replace

from ..errors import RemoteProtocolError
from .frames import AUDIO, DATA, SOURCE_TIMESCALE, VIDEO

MSF_VERSION = "draft-01"
# The versions rtmpq reads: its own, which the draft's examples write, and the "1" one of them writes.
MSF_VERSIONS_READ = (MSF_VERSION, "1")
PACKAGING_LOC = "loc"
INIT_INLINE = "inline"
PRIVATE_CATALOG_VERSION = "rtmpq.catalogVersion"
PRIVATE_SOURCE_TRACK = "rtmpq.source"
PRIVATE_BITRATE_BOUND = "rtmpq.bitrateBound"
PRIVATE_NOT_CARRIED = "rtmpq.notCarried"
# Entries of rtmpq.notCarried a catalog holds (a publisher can name any number of unknown FourCCs:
# each would be a new catalog version), and the longest text of one of their fields.
MAX_NOT_CARRIED = 8
MAX_NOT_CARRIED_TEXT = 64
# Arrays and objects in one another in a catalog document, at most (the draft's examples go 5
# deep: a delta, its deltaUpdate, an operation, its tracks, a track). Deeper ones are refused:
# copying one (a delta applied to it) recursed past Python's limit from about 500 deep.
MAX_CATALOG_DEPTH = 16
# Transcoder rungs are named after their source track and height: "video-480p", "video-1-360p".
RUNG_NAME = re.compile(r"-\d{3,4}p$")


def nal_length_size_of(codec: str, init_data: bytes) -> int | None:
    """The NAL length size an avcC or hvcC declares (None for other codecs or no record)."""
    if codec.startswith(("avc1", "avc3")) and len(init_data) >= 5:
        return (init_data[4] & 0x03) + 1
    if codec.startswith(("hvc1", "hev1")) and len(init_data) >= 22:
        return (init_data[21] & 0x03) + 1
    return None


@dataclass(frozen=True, slots=True)
class NotCarried:
    """A track of a publish whose codec rtmpq does not carry (its frames are dropped at the ingest),
    as the log line names it: what a status page and a player are told instead of waiting for it."""

    kind: str  # video, audio
    codec: str  # what a streamer knows it by: "MP3", "Sorenson H.263" ("unknown" if we do not)
    flv: str  # its FLV FourCC, or "legacy-<n>" for a legacy CodecID / SoundFormat
    carried: str  # the codecs of that kind that are carried: "AAC, Opus, AC-3, E-AC-3"
    ffmpeg: str  # the ffmpeg option that sends a carried one: "-c:a aac"

    def reason(self) -> str:
        return f"{self.kind} codec {self.codec} is not carried (carried: {self.carried}; ffmpeg: {self.ffmpeg})"

    def to_msf(self) -> dict:
        return {"kind": self.kind, "codec": self.codec, "flv": self.flv, "carried": self.carried,
                "ffmpeg": self.ffmpeg}

    @classmethod
    def from_msf(cls, obj) -> "NotCarried | None":
        """An entry of rtmpq.notCarried, or None for one rtmpq cannot read (ignored, as MSF asks
        of fields a parser does not understand). Its words reach a response header: a codec name
        is printable ASCII."""
        if not isinstance(obj, dict) or obj.get("kind") not in (VIDEO, AUDIO):
            return None
        codec, flv, carried, ffmpeg = values = [obj.get(key) for key in ("codec", "flv", "carried", "ffmpeg")]
        if not all(isinstance(v, str) and len(v) <= MAX_NOT_CARRIED_TEXT for v in values):
            return None
        if not all(v.isascii() and v.isprintable() for v in (codec, carried, ffmpeg)):
            return None  # (the FourCC is the publisher's bytes as they came: any text)
        return cls(obj["kind"], codec, flv, carried, ffmpeg)


@dataclass(frozen=True, slots=True)
class TrackInfo:
    name: str  # "video", "audio", "video-1" (E-RTMP track 1), or a rendition such as "video-720p"
    kind: str  # VIDEO, AUDIO or DATA
    codec: str  # WebCodecs / RFC 6381 string: "avc1.64001f", "hvc1.1.6.L93.B0", "av01.0.04M.08", "mp4a.40.2", "opus"
    init_data: bytes = b""  # avcC, hvcC, av1C, OpusHead or AudioSpecificConfig
    timescale: int = SOURCE_TIMESCALE
    width: int | None = None
    height: int | None = None
    framerate: float | None = None
    bitrate: int | None = None  # bits per second (MSF: the maximum): the encoder's, or a codec level's bound
    nal_length_size: int | None = None  # AVC/HEVC only: 1, 2 or 4
    sample_rate: int | None = None
    channels: int | None = None
    render_group: int = 1  # tracks that play together (MSF renderGroup)
    alt_group: int | None = None  # renditions of the same content (MSF altGroup)
    source: str | None = None  # a transcoder rung: the track it is made from (it leaves with it)
    bitrate_is_bound: bool = False  # bitrate is the codec level's bound, not the encoder's setting

    def to_msf(self, *, live: bool = True, init_ref: str | None = None) -> dict:
        """The MSF track object, fields in the draft's order (Table 2)."""
        out: dict = {"name": self.name, "packaging": PACKAGING_LOC, "isLive": live, "role": self.kind,
                     "renderGroup": self.render_group}
        if self.alt_group is not None:
            out["altGroup"] = self.alt_group
        if init_ref is not None:
            out["initRef"] = init_ref
        out["codec"] = self.codec
        for key, value in (
            ("framerate", _number(self.framerate)),
            ("timescale", self.timescale),
            ("bitrate", self.bitrate),
            ("width", self.width),
            ("height", self.height),
            ("samplerate", self.sample_rate),
            ("channelConfig", None if self.channels is None else str(self.channels)),
        ):
            if value is not None:
                out[key] = value
        if self.bitrate_is_bound:
            out[PRIVATE_BITRATE_BOUND] = True
        if self.source is not None:
            out[PRIVATE_SOURCE_TRACK] = self.source
        return out

    @property
    def stated_bitrate(self) -> int | None:
        """The encoder's own bitrate (metadata or a rung's), None when only a level bound is known:
        what a rate estimate (HLS BANDWIDTH, the status page) may start from."""
        return None if self.bitrate_is_bound else self.bitrate

    @classmethod
    def from_msf(cls, obj: dict, init_data: bytes = b"") -> "TrackInfo":
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            raise RemoteProtocolError("MSF track object without a string name")
        role = obj.get("role")
        if role not in (VIDEO, AUDIO, DATA):
            role = VIDEO if "width" in obj else AUDIO if "samplerate" in obj else DATA
        channels = obj.get("channelConfig")
        codec = obj.get("codec", "")
        if not isinstance(codec, str):
            raise RemoteProtocolError("MSF track object with a codec that is not a string")
        return cls(
            name=obj["name"],
            kind=role,
            codec=codec,
            init_data=init_data,
            timescale=_integer(obj, "timescale", SOURCE_TIMESCALE),
            width=_integer(obj, "width"),
            height=_integer(obj, "height"),
            framerate=_finite(obj.get("framerate")),
            bitrate=_integer(obj, "bitrate"),
            bitrate_is_bound=obj.get(PRIVATE_BITRATE_BOUND) is True,
            nal_length_size=nal_length_size_of(codec, init_data),
            sample_rate=_integer(obj, "samplerate"),
            channels=int(channels) if isinstance(channels, str) and channels.isascii() and channels.isdigit() else None,
            render_group=_integer(obj, "renderGroup", 1),
            alt_group=_integer(obj, "altGroup"),
            source=source if isinstance(source := obj.get(PRIVATE_SOURCE_TRACK), str) else None,
        )


def _finite(value) -> int | float | None:
    """A JSON number of a catalog field, or None for anything else (a string, an array, 1e999)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _integer(obj: dict, key: str, default: int | None = None) -> int | None:
    """A whole-number catalog field (1920 or 1920.0), ``default`` when it is absent or null; a
    value of another kind is refused (before, it reached the code that reads it as it came)."""
    if obj.get(key) is None:
        return default
    value = _finite(obj[key])
    if value is None or value != int(value):
        raise RemoteProtocolError(f"MSF catalog field {key!r} is not a whole number")
    return int(value)


@dataclass(frozen=True, slots=True)
class Catalog:
    broadcast: str  # "live/<key>"
    tracks: tuple[TrackInfo, ...] = ()
    version: int = 1  # rtmpq's counter of catalog changes (MSF orders catalogs by group instead)
    metadata: dict = field(default_factory=dict, compare=False)  # onMetaData, for information
    generated_at: int | None = field(default=None, compare=False)  # ms since the epoch (MSF generatedAt)
    live: bool = True  # MSF isLive of every track
    complete: bool = False  # MSF isComplete: no track will be added or grow any more
    not_carried: tuple[NotCarried, ...] = ()  # what the publisher sends that is dropped (rtmpq.notCarried)

    @property
    def empty(self) -> bool:
        """It says nothing yet: no track, and nothing the publisher sends is dropped (a publish of
        MP3 alone has no track, and its catalog goes out to say why)."""
        return not self.tracks and not self.not_carried

    def track(self, name: str) -> TrackInfo | None:
        for t in self.tracks:
            if t.name == name:
                return t
        return None

    def default_tracks(self, rendition: str | None = None) -> list[str]:
        """One track per altGroup (the first listed: the source rendition; with ``rendition``,
        e.g. "480p", the member named ``...-480p`` when there is one) and every track outside one."""
        chosen: dict[int, TrackInfo] = {}
        out: list[str] = []
        for t in self.tracks:
            if t.alt_group is None:
                out.append(t.name)
            elif t.alt_group not in chosen or (rendition and t.name.endswith("-" + rendition)
                                               and not chosen[t.alt_group].name.endswith("-" + rendition)):
                chosen[t.alt_group] = t
        return out + [t.name for t in chosen.values()]

    def is_rung(self, name: str) -> bool:
        """An alternate made on demand from another track (a transcoder rung, "video-480p"): it
        costs CPU only while someone takes it."""
        return RUNG_NAME.search(name) is not None and self.is_alternate(name)

    def rung_source(self, name: str) -> str:
        """The track the rung ``name`` is made from: as its catalog entry says (``rtmpq.source``),
        else as its name says (a transcoder that does not write the field)."""
        t = self.track(name)
        return t.source if t is not None and t.source else RUNG_NAME.sub("", name)

    def is_alternate(self, name: str) -> bool:
        """A track of an altGroup that is not its first (a rung, another E-RTMP rendition): taken
        only when asked for."""
        t = self.track(name)
        return t is not None and t.alt_group is not None and name not in self.default_tracks()

    def with_track(self, info: TrackInfo, *, generated_at: int | None = None) -> "Catalog":
        """A new catalog with ``info`` added or replacing the track of the same name."""
        others = tuple(t for t in self.tracks if t.name != info.name)
        ordered = tuple(sorted(others + (info,), key=_track_order))
        return replace(self, tracks=ordered, version=self.version + 1,
                       generated_at=self.generated_at if generated_at is None else generated_at)

    def without_tracks(self, names, *, generated_at: int | None = None) -> "Catalog":
        """A new catalog without the tracks named in ``names``."""
        return replace(self, tracks=tuple(t for t in self.tracks if t.name not in names), version=self.version + 1,
                       generated_at=self.generated_at if generated_at is None else generated_at)

    def with_not_carried(self, dropped: NotCarried, *, generated_at: int | None = None) -> "Catalog":
        """A new catalog that also lists ``dropped`` as not carried (this one when it is already
        listed, or MAX_NOT_CARRIED are)."""
        if dropped in self.not_carried or len(self.not_carried) >= MAX_NOT_CARRIED:
            return self
        return replace(self, not_carried=self.not_carried + (dropped,), version=self.version + 1,
                       generated_at=self.generated_at if generated_at is None else generated_at)

    def to_json(self) -> bytes:
        doc: dict = {"version": MSF_VERSION}
        if self.live and self.generated_at is not None:
            doc["generatedAt"] = self.generated_at
        if self.complete:
            doc["isComplete"] = True
        init_list = []
        tracks = []
        for t in self.tracks:
            ref = None
            if t.init_data:
                ref = t.name  # track names are unique in the catalog, so they serve as ids
                init_list.append({"id": ref, "type": INIT_INLINE, "data": base64.b64encode(t.init_data).decode("ascii")})
            tracks.append(t.to_msf(live=self.live, init_ref=ref))
        doc["tracks"] = tracks
        if init_list:
            doc["initDataList"] = init_list
        doc["broadcast"] = self.broadcast
        doc[PRIVATE_CATALOG_VERSION] = self.version
        if self.not_carried:
            doc[PRIVATE_NOT_CARRIED] = [d.to_msf() for d in self.not_carried]
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> "Catalog":
        """An independent MSF catalog (ours or anyone's). Raises RemoteProtocolError for what is not
        one: bad JSON, a version we do not read, a delta update (CatalogTrack applies those to the
        catalog they change), or an initRef naming no inline entry."""
        doc = load_catalog_json(data)
        if "deltaUpdate" in doc:
            raise RemoteProtocolError("MSF catalog delta update without the catalog it applies to")
        return cls.from_doc(doc)

    @classmethod
    def from_doc(cls, doc: dict) -> "Catalog":
        """The catalog an independent MSF catalog document (parsed JSON) describes."""
        version = doc.get("version")
        if not isinstance(version, str) or not isinstance(doc.get("tracks"), list):
            raise RemoteProtocolError("MSF catalog needs a string version and a tracks array")
        if version not in MSF_VERSIONS_READ:  # MSF: MUST NOT parse a version it does not understand
            raise RemoteProtocolError(f"MSF catalog version {version[:32]!r} is not one rtmpq reads "
                                      f"({', '.join(MSF_VERSIONS_READ)})")
        inits: dict[str, bytes | None] = {}
        for entry in doc.get("initDataList") or ():
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise RemoteProtocolError("MSF initDataList entry without a string id")
            if entry.get("type") == INIT_INLINE:
                try:
                    inits[entry["id"]] = base64.b64decode(entry.get("data", ""), validate=True)
                except (binascii.Error, TypeError):
                    raise RemoteProtocolError(f"MSF initDataList entry {entry['id']!r} is not base64") from None
            else:
                inits[entry["id"]] = None  # carried in a track or object property, not here
        tracks = []
        for obj in doc["tracks"]:
            ref = obj.get("initRef") if isinstance(obj, dict) else None
            if ref is not None and ref not in inits:
                raise RemoteProtocolError(f"MSF initRef {ref!r} names no initDataList entry")
            tracks.append(TrackInfo.from_msf(obj, (inits.get(ref) if ref is not None else None) or b""))
        live = all(t.get("isLive", True) is not False for t in doc["tracks"] if isinstance(t, dict))
        generated = doc.get("generatedAt")
        listed = doc.get(PRIVATE_NOT_CARRIED)
        dropped = [NotCarried.from_msf(obj) for obj in listed[:MAX_NOT_CARRIED]] if isinstance(listed, list) else ()
        return cls(
            broadcast=str(doc.get("broadcast", "")),
            tracks=tuple(tracks),
            version=_integer(doc, PRIVATE_CATALOG_VERSION, 1),
            generated_at=int(generated) if (generated := _finite(generated)) is not None else None,
            live=live,
            complete=doc.get("isComplete") is True,
            not_carried=tuple(d for d in dropped if d is not None),
        )


def load_catalog_json(data: bytes | str) -> dict:
    """The JSON object of a catalog object (independent or delta), or RemoteProtocolError."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RemoteProtocolError(f"MSF catalog is not JSON: {exc}") from None
    except RecursionError:  # arrays or objects nested a few thousand deep
        raise RemoteProtocolError("MSF catalog is not JSON: nested too deep") from None
    if not isinstance(doc, dict):
        raise RemoteProtocolError("MSF catalog is not a JSON object")
    if _depth(doc) > MAX_CATALOG_DEPTH:
        raise RemoteProtocolError(f"MSF catalog nests arrays and objects more than {MAX_CATALOG_DEPTH} deep")
    return doc


def _depth(doc) -> int:
    """How deep arrays and objects go in a parsed JSON document (without recursing)."""
    deepest, level = 0, [doc]
    while level:
        deepest += 1
        level = [v for c in level for v in (c.values() if isinstance(c, dict) else c) if isinstance(v, (dict, list))]
    return deepest


def _number(value: float | None) -> float | int | None:
    """30.0 is written 30, as the draft writes frame rates."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _track_order(t: TrackInfo) -> tuple:
    """Video first, then audio, then data; in a kind, the default track, then by E-RTMP track id,
    then transcoder rungs ("video-480p") from the tallest down."""
    kind = {VIDEO: 0, AUDIO: 1}.get(t.kind, 2)
    base, _, number = t.name.rpartition("-")
    if base and number.isdigit():
        return kind, base, 1, int(number)
    if base and number[:-1].isdigit() and number.endswith("p"):
        return kind, base, 2, -int(number[:-1])
    return kind, t.name, 0, 0
