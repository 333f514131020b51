"""Each catalog version is a group on its own QUIC stream, and the newest group goes first: an
older version can arrive after a newer one. Found in CI: a subscriber that applied the older,
video-only catalog last let go of the audio track (UNSUBSCRIBE) and received no audio at all."""


from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.moq import events as ev
from rtmpq.moq.loc import CATALOG_TRACK
from rtmpq.moq.wire import PublishDoneStatus

from .conftest import subscribe_to_raw_publisher

VIDEO = TrackInfo(name="video", kind="video", codec="avc1.64001f", init_data=b"\x01", alt_group=1)
AUDIO = TrackInfo(name="audio", kind="audio", codec="mp4a.40.2", init_data=b"\x12\x10")


def publisher(conn, unsubscribed: list) -> None:
    """Answers the catalog with version 1 (both tracks) before version 0 (video only), then one
    frame per track and PUBLISH_DONE."""
    session = conn.session
    aliases = iter(range(100))

    def on_event(_conn, event) -> None:
        if isinstance(event, ev.Unsubscribed):
            unsubscribed.append(event.request_id)
        if not isinstance(event, ev.SubscribeRequested):
            return
        alias = next(aliases)
        session.subscribe_ok(event.request_id, alias)
        if event.track_name == CATALOG_TRACK:
            versions = {1: Catalog("live/x", (VIDEO, AUDIO)), 0: Catalog("live/x", (VIDEO,))}
            for group in (1, 0):  # the newer version first, as a relay sending newest first can
                sid = session.open_subgroup(alias, group)
                session.send_object(sid, 0, versions[group].to_json())
                session.end_subgroup(sid)
        else:
            sid = session.open_subgroup(alias, 0)
            session.send_object(sid, 0, b"frame of " + event.track_name.encode())
            session.end_subgroup(sid)
        session.publish_done(event.request_id, PublishDoneStatus.TRACK_ENDED, 1 if event.track_name != CATALOG_TRACK else 2)
        conn.flush()

    conn.handler = on_event


async def test_an_older_catalog_arriving_late_does_not_undo_the_newer(tmp_path):
    unsubscribed: list = []
    got = await subscribe_to_raw_publisher(tmp_path, lambda conn: publisher(conn, unsubscribed))
    catalogs = [i for i in got if isinstance(i, Catalog)]
    assert [[t.name for t in c.tracks] for c in catalogs] == [["video", "audio"]]
    assert sorted(bytes(f.payload) for f in got if not isinstance(f, Catalog)) == [b"frame of audio", b"frame of video"]
    assert unsubscribed == []
