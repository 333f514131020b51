"""MSF delta updates: each operation applied as the draft defines it, a malformed delta refused
clearly, and the catalog track read as MSF orders it (object 0 independent, later objects of the
group deltas of it, older groups ignored)."""

import json
import logging

import pytest

from rtmpq.errors import RemoteProtocolError
from rtmpq.media.catalog import Catalog, TrackInfo, load_catalog_json
from rtmpq.media.catalog_delta import apply_delta
from rtmpq.moq.catalog_track import CatalogTrack
from tests.test_catalog import DELTAS

VIDEO = TrackInfo("video", "video", "avc1.64001f", b"\x01\x64\x00\x1f\xff", width=1280, height=720,
                  bitrate=2_500_000, alt_group=1)
AUDIO = {"name": "audio", "packaging": "loc", "isLive": True, "role": "audio", "codec": "opus",
         "samplerate": 48000, "channelConfig": "2", "bitrate": 96000}


def base_doc() -> dict:
    return json.loads(Catalog("live/x", (VIDEO,), generated_at=1).to_json())


def delta(*ops, generated_at: int = 2) -> dict:
    return {"generatedAt": generated_at, "deltaUpdate": [{"op": op, "tracks": tracks} for op, tracks in ops]}


def catalog_of(doc: dict) -> Catalog:
    return Catalog.from_doc(doc)


def test_add_puts_a_new_track_in():
    doc = apply_delta(base_doc(), delta(("add", [AUDIO])))
    catalog = catalog_of(doc)
    assert [t.name for t in catalog.tracks] == ["video", "audio"]
    assert (catalog.track("audio").sample_rate, catalog.track("audio").channels) == (48000, 2)
    assert catalog.generated_at == 2


def test_remove_takes_a_track_out():
    doc = apply_delta(base_doc(), delta(("add", [AUDIO])))
    assert [t.name for t in catalog_of(apply_delta(doc, delta(("remove", [{"name": "audio"}])))).tracks] == ["video"]


def test_clone_inherits_every_field_but_the_name_and_takes_overrides():
    doc = apply_delta(base_doc(), delta(("clone", [{"parentName": "video", "name": "video-480p", "width": 854,
                                                    "height": 480, "bitrate": 900_000}])))
    clone = catalog_of(doc).track("video-480p")
    assert (clone.width, clone.height, clone.bitrate) == (854, 480, 900_000)
    assert (clone.codec, clone.alt_group, clone.init_data) == (VIDEO.codec, 1, VIDEO.init_data)  # initRef too
    assert "parentName" not in doc["tracks"][-1]
    assert catalog_of(doc).track("video") == catalog_of(base_doc()).track("video")


def test_update_overrides_the_fields_given():
    doc = apply_delta(base_doc(), delta(("update", [{"parentName": "video", "bitrate": 4_000_000}])))
    video = catalog_of(doc).track("video")
    assert (video.bitrate, video.width, video.codec) == (4_000_000, 1280, VIDEO.codec)


def test_operations_apply_in_order_each_on_the_result_of_the_last():
    doc = apply_delta(base_doc(), delta(("add", [AUDIO]), ("clone", [{"parentName": "audio", "name": "audio-2"}]),
                                        ("remove", [{"name": "audio"}]),
                                        ("update", [{"parentName": "audio-2", "bitrate": 64000}])))
    catalog = catalog_of(doc)
    assert [t.name for t in catalog.tracks] == ["video", "audio-2"]
    assert catalog.track("audio-2").bitrate == 64000


def test_the_drafts_delta_examples_apply():
    """The draft's two delta examples, on a catalog holding the tracks they name: ``update``
    names its track with ``name`` there, and ``clone`` takes a parent of another namespace."""
    base = {"version": "draft-01", "tracks": [
        {"name": "video", "role": "video", "codec": "avc1.64001f", "width": 640, "height": 360},
        {"name": "video-1080", "role": "video", "codec": "av01.0.08M.10", "width": 1920, "height": 1080,
         "bitrate": 3_000_000},
        {"namespace": "example.com/custom", "name": "video-1080", "role": "video", "codec": "avc1.640028",
         "width": 1920, "height": 1080}]}
    added, removed = (json.loads(e["json"]) for e in DELTAS)
    doc = apply_delta(base, added)
    assert [(t.get("namespace"), t["name"]) for t in doc["tracks"]] == [
        (None, "video"), (None, "video-1080"), ("example.com/custom", "video-1080"), (None, "slides"),
        ("example.com/custom", "video-720")]
    assert doc["tracks"][1]["bitrate"] == 4_000_000
    assert doc["tracks"][4]["codec"] == "avc1.640028" and doc["tracks"][4]["width"] == 1280
    doc = apply_delta(doc, removed)
    assert [t.name for t in catalog_of(doc).tracks] == ["video-1080", "video-1080", "video-720"]


@pytest.mark.parametrize("bad, error", [
    (delta(("rename", [AUDIO])), "not an add, remove, clone or update"),
    (delta(("remove", [{"name": "audio"}])), "no track 'audio'"),
    (delta(("add", [{**AUDIO, "name": "video"}])), "already in the catalog"),
    (delta(("clone", [{"parentName": "audio", "name": "audio-2"}])), "no track 'audio'"),
    (delta(("clone", [{"parentName": "video", "name": "video"}])), "already in the catalog"),
    (delta(("update", [{"parentName": "slides", "bitrate": 1}])), "no track 'slides'"),
    (delta(("remove", [{"name": "video", "bitrate": 1}])), "besides name and namespace"),
    (delta(("add", [{"codec": "opus"}])), "without a string name"),
    ({**delta(("add", [AUDIO])), "version": "draft-01"}, "root fields it may not: version"),
    ({**delta(("add", [AUDIO])), "tracks": []}, "root fields it may not: tracks"),
    ({"generatedAt": 2, "deltaUpdate": []}, "non-empty deltaUpdate"),
    ({"deltaUpdate": [{"op": "add", "tracks": [AUDIO]}]}, "generatedAt"),
])
def test_a_malformed_delta_is_refused_clearly_and_changes_nothing(bad, error):
    doc = base_doc()
    before = json.dumps(doc)
    with pytest.raises(RemoteProtocolError, match=error):
        apply_delta(doc, bad)
    assert json.dumps(doc) == before


def independent(*extra: TrackInfo) -> bytes:
    return Catalog("live/x", (VIDEO, *extra), generated_at=1).to_json()


def as_object(doc: dict) -> bytes:
    return json.dumps(doc).encode()


def names(catalogs) -> list[list[str]]:
    return [[t.name for t in c.tracks] for c in catalogs]


def test_a_catalog_track_applies_a_groups_deltas_to_its_object_0():
    track = CatalogTrack("live/x")
    assert names(track.read(0, 0, independent())) == [["video"]]
    assert names(track.read(0, 1, as_object(delta(("add", [AUDIO]))))) == [["video", "audio"]]
    assert names(track.read(0, 2, as_object(delta(("remove", [{"name": "audio"}]))))) == [["video"]]
    assert track.catalog.version == 3  # each applied delta is a change of the catalog
    assert names(track.read(1, 0, independent())) == [["video"]]  # a new group starts afresh


def test_a_catalog_track_ignores_what_precedes_the_latest_group():
    track = CatalogTrack("live/x")
    assert names(track.read(5, 0, independent())) == [["video"]]
    assert track.read(4, 1, as_object(delta(("add", [AUDIO])))) == []
    assert track.read(4, 0, independent()) == []
    assert track.read(5, 0, independent()) == []  # again (a replay, the joining FETCH): nothing new
    assert names([track.catalog]) == [["video"]]


def test_a_delta_that_comes_before_object_0_waits_for_it():
    """A SUBSCRIBE can bring a delta before its joining FETCH brings object 0 of the group."""
    track = CatalogTrack("live/x")
    assert track.read(3, 2, as_object(delta(("update", [{"parentName": "audio", "bitrate": 1000}])))) == []
    assert track.read(3, 0, independent()) == [track.catalog]
    made = track.read(3, 1, as_object(delta(("add", [AUDIO]))))
    assert names(made) == [["video", "audio"], ["video", "audio"]]
    assert made[-1].track("audio").bitrate == 1000


def test_a_bad_catalog_object_keeps_the_last_good_catalog_and_warns_once(caplog):
    track = CatalogTrack("live/x")
    track.read(0, 0, independent())
    good = track.catalog
    with caplog.at_level(logging.DEBUG, "rtmpq.moq"):
        assert track.read(0, 1, as_object(delta(("remove", [{"name": "audio"}])))) == []
        assert track.read(0, 2, as_object(delta(("add", [AUDIO])))) == []  # it would apply to what was refused
        assert track.read(1, 0, b'{"version": "draft-99", "tracks": []}') == []
        assert track.read(2, 0, b"not json") == []
    assert track.catalog is good
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no track 'audio'" in warnings[0].getMessage()
    assert names(track.read(3, 0, independent())) == [["video"]]


def test_a_group_that_starts_with_a_delta_is_refused():
    track = CatalogTrack("live/x")
    assert track.read(0, 0, as_object(delta(("add", [AUDIO])))) == []
    assert track.catalog is None


def test_load_catalog_json_wants_an_object():
    with pytest.raises(RemoteProtocolError):
        load_catalog_json(b"[]")


def test_a_catalog_nested_too_deep_for_the_json_reader_is_refused_like_any_bad_json():
    """Found with the moq_catalog fuzz target: json.loads raises RecursionError, not ValueError, on
    arrays nested a few thousand deep; it escaped CatalogTrack.read (out of the MoQ client's
    subscribe loop: the edge, `rtmpq sub`, the transcoder) and Catalog.from_json."""
    deep = b'{"version": "draft-01", "tracks": ' + b"[" * 5000
    with pytest.raises(RemoteProtocolError, match="nested too deep"):
        Catalog.from_json(deep)
    track = CatalogTrack("live/x")
    track.read(0, 0, independent())
    good = track.catalog
    assert track.read(0, 1, b'{"generatedAt": 2, "deltaUpdate": ' + b"[" * 5000) == []
    assert track.read(1, 0, deep) == []
    assert track.catalog is good
    assert names(track.read(2, 0, independent())) == [["video"]]


def test_a_catalog_nested_deeper_than_max_catalog_depth_is_refused():
    """Found with the moq_catalog fuzz target: a track field 500 arrays deep parsed, then applying
    a delta to that catalog (copy.deepcopy) raised RecursionError out of CatalogTrack.read."""
    from rtmpq.media.catalog import MAX_CATALOG_DEPTH

    doc = base_doc()
    doc["tracks"][0]["x"] = json.loads("[" * 500 + "]" * 500)
    track = CatalogTrack("live/x")
    track.read(0, 0, json.dumps(doc).encode())
    assert track.read(0, 1, as_object(delta(("add", [AUDIO])))) == []  # was: RecursionError
    assert track.catalog is None  # refused at object 0
    doc["tracks"][0]["x"] = json.loads("[" * (MAX_CATALOG_DEPTH - 3) + "]" * (MAX_CATALOG_DEPTH - 3))  # root, tracks, track
    assert names(track.read(1, 0, json.dumps(doc).encode())) == [["video"]]
    assert names(track.read(1, 1, as_object(delta(("add", [AUDIO]))))) == [["video", "audio"]]
    doc["tracks"][0]["x"] = [doc["tracks"][0]["x"]]
    with pytest.raises(RemoteProtocolError, match=f"more than {MAX_CATALOG_DEPTH} deep"):
        load_catalog_json(json.dumps(doc).encode())


@pytest.mark.parametrize("field, value", [("codec", 2000), ("width", "1920"), ("timescale", "1e999"),
                                          ("renderGroup", [1]), ("bitrate", 0.5), ("/rtmpq.catalogVersion", "1e999"),
                                          ("/generatedAt", "1e999")])
def test_a_field_of_the_wrong_kind_is_refused_and_the_catalog_stays(field, value):
    """Found by `make fuzz` (moq_catalog, tests/data/corpus/crashes/moq_catalog-codec-not-a-string,
    moq_catalog-generated-at-infinite): a codec that is a number raised AttributeError out of
    CatalogTrack.read; a number too big for a double (1e999, which json reads as infinity)
    OverflowError from int(). ("/x": a root field.) A generatedAt that is no number is ignored."""
    doc = base_doc()
    (doc if field.startswith("/") else doc["tracks"][0])[field.lstrip("/")] = value
    data = json.dumps(doc).encode().replace(b'"1e999"', b"1e999")
    if field == "/generatedAt":
        assert Catalog.from_json(data).generated_at is None
        return
    with pytest.raises(RemoteProtocolError, match="MSF"):
        Catalog.from_json(data)
    track = CatalogTrack("live/x")
    track.read(0, 0, independent())
    good = track.catalog
    assert track.read(1, 0, data) == [] and track.catalog is good
    doc = base_doc()
    doc["tracks"][0]["width"] = None  # null is absent
    assert Catalog.from_json(json.dumps(doc).encode()).track("video").width is None
