"""The catalog is an MSF catalog as draft-ietf-moq-msf writes it: read the draft's own examples,
write the draft's field names, types and order, and read back what we write."""

import base64
import json
from pathlib import Path

import pytest

from rtmpq.errors import RemoteProtocolError
from rtmpq.media.catalog import MAX_NOT_CARRIED, PRIVATE_NOT_CARRIED, Catalog, NotCarried, TrackInfo

EXAMPLES = json.loads((Path(__file__).parent / "data" / "msf-draft-examples.json").read_text())["examples"]
INDEPENDENT = [e for e in EXAMPLES if "deltaUpdate" not in json.loads(e["json"])]
DELTAS = [e for e in EXAMPLES if "deltaUpdate" in json.loads(e["json"])]

# Table 1 and Table 2 of the draft, in the draft's order (the fields rtmpq can write).
ROOT_ORDER = ["version", "generatedAt", "isComplete", "tracks", "publishTracks", "deltaUpdate", "initDataList"]
TRACK_ORDER = ["namespace", "name", "packaging", "eventType", "isLive", "targetLatency", "buffers", "role", "label",
               "renderGroup", "altGroup", "initRef", "depends", "temporalId", "spatialId", "codec", "mimeType",
               "framerate", "timescale", "bitrate", "avgBitrate", "maxGopDuration", "maxGroupDuration", "width",
               "height", "samplerate", "channelConfig", "displayWidth", "displayHeight", "lang"]

AVCC = bytes.fromhex("0164001fffe1001967640 01facd9405005bb011000000300100000030320f1831960 01000668ebe3cb22c0".replace(" ", ""))


def sample_catalog() -> Catalog:
    c = Catalog("live/cam1", generated_at=1746104606044)
    c = c.with_track(TrackInfo("video", "video", "avc1.64001f", AVCC, width=1280, height=720, framerate=30.0,
                               bitrate=2_500_000, nal_length_size=4, alt_group=1))
    c = c.with_track(TrackInfo("video-1", "video", "av01.0.04M.08", b"\x81\x04\x0c\x00", width=640, height=360,
                               framerate=30.0, bitrate=800_000, alt_group=1))
    c = c.with_track(TrackInfo("audio", "audio", "opus", b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00",
                               sample_rate=48000, channels=2, bitrate=96_000))
    return c.with_track(TrackInfo("data", "data", "amf0"))


@pytest.mark.parametrize("example", INDEPENDENT, ids=[e["section"] for e in INDEPENDENT])
def test_reads_every_catalog_example_of_the_draft(example):
    doc = json.loads(example["json"])
    catalog = Catalog.from_json(example["json"])
    assert [t.name for t in catalog.tracks] == [t["name"] for t in doc["tracks"]]
    for track, obj in zip(catalog.tracks, doc["tracks"], strict=True):
        assert track.codec == obj.get("codec", "")
        if obj.get("role") in ("video", "audio"):
            assert track.kind == obj["role"]
        assert (track.width, track.height, track.sample_rate, track.bitrate, track.alt_group) == (
            obj.get("width"), obj.get("height"), obj.get("samplerate"), obj.get("bitrate"), obj.get("altGroup"))
        if "channelConfig" in obj:
            assert str(track.channels) == obj["channelConfig"]
    assert catalog.complete == bool(doc.get("isComplete"))
    assert catalog.live == all(t.get("isLive", True) for t in doc["tracks"])


@pytest.mark.parametrize("example", DELTAS, ids=[e["section"] for e in DELTAS])
def test_a_delta_update_is_refused_clearly(example):
    with pytest.raises(RemoteProtocolError, match="delta"):
        Catalog.from_json(example["json"])


def test_writes_the_drafts_fields_types_and_order():
    doc = json.loads(sample_catalog().to_json())
    assert doc["version"] == "draft-01"
    assert doc["generatedAt"] == 1746104606044
    msf_root = [k for k in doc if k in ROOT_ORDER]
    assert msf_root == sorted(msf_root, key=ROOT_ORDER.index) == ["version", "generatedAt", "tracks", "initDataList"]
    # private fields are the only others, named so they cannot collide with the draft's
    assert [k for k in doc if k not in ROOT_ORDER] == ["broadcast", "rtmpq.catalogVersion"]
    inits = {e["id"]: e for e in doc["initDataList"]}
    for obj in doc["tracks"]:
        keys = list(obj)
        assert keys == sorted(keys, key=TRACK_ORDER.index), keys  # every key is the draft's, in its order
        assert isinstance(obj["name"], str) and obj["packaging"] == "loc" and obj["isLive"] is True
        assert isinstance(obj["codec"], str)
        if obj["role"] in ("video", "audio"):
            assert isinstance(obj["bitrate"], int) and isinstance(obj["renderGroup"], int)
            entry = inits[obj["initRef"]]
            assert entry["type"] == "inline"
            assert base64.b64decode(entry["data"]) == sample_catalog().track(obj["name"]).init_data
        if obj["role"] == "audio":
            assert isinstance(obj["samplerate"], int) and obj["channelConfig"] == "2"
        if obj["role"] == "video":
            assert isinstance(obj["width"], int) and isinstance(obj["height"], int)
    assert [t["name"] for t in doc["tracks"]] == ["video", "video-1", "audio", "data"]
    assert [t.get("altGroup") for t in doc["tracks"]] == [1, 1, None, None]
    assert "initData" not in json.dumps(doc["tracks"])  # no private decoder configuration any more


def test_our_tracks_look_like_the_drafts_example_tracks():
    """The draft's first example (av01 video + opus audio): our track objects carry the same
    fields, plus only timescale, initRef and altGroup (all MSF fields)."""
    example = json.loads(INDEPENDENT[0]["json"])
    ours = {t["name"]: t for t in json.loads(sample_catalog().to_json())["tracks"]}
    for theirs, mine in ((example["tracks"][0], ours["video-1"]), (example["tracks"][1], ours["audio"])):
        expected = set(theirs) - {"namespace", "targetLatency"}  # optional: inherit / player's choice
        assert set(mine) - expected <= {"timescale", "initRef", "altGroup"}
        assert expected <= set(mine)
        assert {k: type(v) for k, v in mine.items() if k in expected} == {k: type(v) for k, v in theirs.items() if k in expected}


def test_reads_back_what_it_writes():
    catalog = sample_catalog()
    again = Catalog.from_json(catalog.to_json())
    assert again == catalog
    assert again.track("video").nal_length_size == 4  # from the avcC, not a private field
    assert again.generated_at == catalog.generated_at
    ended = Catalog.from_json(Catalog("live/x", catalog.tracks, live=False, complete=True).to_json())
    assert not ended.live and ended.complete


@pytest.mark.parametrize("bad", [
    b"not json", b"[]", b'{"version": 1, "tracks": []}', b'{"version": "draft-01"}',
    b'{"version": "draft-01", "tracks": [{"name": "v", "initRef": "x"}]}',
    b'{"version": "draft-01", "tracks": [], "initDataList": [{"id": "x", "type": "inline", "data": "%%"}]}',
    b'{"version": "draft-01", "tracks": [{"codec": "opus"}]}',
])
def test_malformed_catalogs_raise_remote_protocol_errors(bad):
    with pytest.raises(RemoteProtocolError):
        Catalog.from_json(bad)


def test_a_rungs_source_is_the_one_its_catalog_entry_names():
    """The edge puts a rung on its source's timeline: the track ``rtmpq.source`` names (a
    transcoder that names its rungs its own way), else the one its name says."""
    source = TrackInfo("video", "video", "avc1.64001f", alt_group=1)
    camera = TrackInfo("video-1", "video", "avc1.64001f", alt_group=2)
    named = TrackInfo("video-1-480p", "video", "avc1.64001e", alt_group=2)
    told = TrackInfo("cam-b-360p", "video", "avc1.64001e", alt_group=1, source="video")
    catalog = Catalog("live/x", (source, camera, named, told))
    assert catalog.rung_source("video-1-480p") == "video-1"
    assert catalog.rung_source("cam-b-360p") == "video"


@pytest.mark.parametrize("version", ["draft-99", "draft-00", "2"])
def test_a_catalog_version_rtmpq_does_not_read_is_refused(version):
    """MSF: a subscriber MUST NOT parse a catalog version it does not understand."""
    doc = json.loads(sample_catalog().to_json())
    with pytest.raises(RemoteProtocolError, match="version"):
        Catalog.from_json(json.dumps({**doc, "version": version}))


MP3 = NotCarried("audio", "MP3", ".mp3", "AAC, Opus, AC-3, E-AC-3", "-c:a aac")


def test_what_is_not_carried_travels_in_the_catalog_as_a_field_of_rtmpqs_own():
    """A publish of MP3 alone: a catalog with no track and the dropped one under rtmpq.notCarried
    (MSF: custom fields must not collide with the draft's; parsers ignore what they do not
    understand), read back by rtmpq, and read by another implementation (aiomoqt's MSF catalog
    model) as a clean catalog that keeps the field as it is."""
    from aiomoqt.media.catalog import Catalog as TheirCatalog

    catalog = Catalog("live/cam", generated_at=1746104606044).with_not_carried(MP3)
    doc = json.loads(catalog.to_json())
    assert doc["tracks"] == [] and PRIVATE_NOT_CARRIED not in ROOT_ORDER + TRACK_ORDER
    assert doc[PRIVATE_NOT_CARRIED] == [{"kind": "audio", "codec": "MP3", "flv": ".mp3",
                                         "carried": "AAC, Opus, AC-3, E-AC-3", "ffmpeg": "-c:a aac"}]
    again = Catalog.from_json(catalog.to_json())
    assert again == catalog and again.not_carried == (MP3,) and not again.empty
    theirs = TheirCatalog.from_json(catalog.to_json().decode())
    assert theirs.validate() == [] and theirs.tracks == []
    assert theirs.extra[PRIVATE_NOT_CARRIED] == doc[PRIVATE_NOT_CARRIED]
    # with a carried track beside it, the track is an MSF track as any other
    mixed = Catalog.from_json(sample_catalog().with_not_carried(MP3).to_json())
    assert mixed.not_carried == (MP3,) and len(mixed.tracks) == 4
    assert TheirCatalog.from_json(sample_catalog().with_not_carried(MP3).to_json().decode()).validate() == []
    assert PRIVATE_NOT_CARRIED not in json.loads(sample_catalog().to_json())  # only when something is dropped


def test_not_carried_entries_rtmpq_cannot_read_are_ignored_and_their_number_is_bounded():
    """A peer's field of the wrong shape is ignored, not the catalog; a codec name reaches a
    response header, so it is printable ASCII; a publisher naming FourCC after FourCC makes at
    most MAX_NOT_CARRIED entries (each is a new catalog version)."""
    good = MP3.to_msf()
    doc = {"version": "draft-01", "tracks": [], PRIVATE_NOT_CARRIED: [
        good, "MP3", {**good, "kind": "data"}, {**good, "codec": "MP3\r\nSet-Cookie: x"}, {**good, "carried": 5},
        {**good, "codec": "x" * 100}, {**good, "flv": "\x01\x02\x03\x04"}]}
    read = Catalog.from_json(json.dumps(doc))
    assert read.not_carried == (MP3, NotCarried("audio", "MP3", "\x01\x02\x03\x04", MP3.carried, MP3.ffmpeg))
    assert Catalog.from_json(json.dumps({**doc, PRIVATE_NOT_CARRIED: {"kind": "audio"}})).not_carried == ()
    catalog = Catalog("live/x")
    for n in range(MAX_NOT_CARRIED + 3):
        catalog = catalog.with_not_carried(NotCarried("video", "unknown", f"x{n:03}", "H.264", "-c:v libx264"))
    assert len(catalog.not_carried) == MAX_NOT_CARRIED and catalog.version == 1 + MAX_NOT_CARRIED
    assert catalog.with_not_carried(catalog.not_carried[0]) is catalog
    many = {"version": "draft-01", "tracks": [], PRIVATE_NOT_CARRIED: [good] * 1000}
    assert len(Catalog.from_json(json.dumps(many)).not_carried) == MAX_NOT_CARRIED
