"""MSF: objects after object 0 of a catalog group are delta updates of it. A publisher that adds a
track with a delta gets it subscribed (its frames reach the subscriber), and one that removes it
with a later delta gets it let go. Before deltas were read, the subscription died on the first."""

import json

from rtmpq.media.catalog import Catalog, TrackInfo
from rtmpq.media.frames import Frame
from rtmpq.moq import events as ev
from rtmpq.moq.loc import CATALOG_TRACK, EXT_TIMESCALE, EXT_TIMESTAMP
from rtmpq.moq.wire import PublishDoneStatus

from .conftest import subscribe_to_raw_publisher

VIDEO = TrackInfo(name="video", kind="video", codec="avc1.64001f", init_data=b"\x01", bitrate=2_000_000)
AUDIO = {"name": "audio", "packaging": "loc", "isLive": True, "role": "audio", "codec": "opus", "timescale": 48000,
         "samplerate": 48000, "channelConfig": "2", "bitrate": 96000}
ADD_AUDIO = {"generatedAt": 2, "deltaUpdate": [{"op": "add", "tracks": [AUDIO]}]}
DROP_AUDIO = {"generatedAt": 3, "deltaUpdate": [{"op": "remove", "tracks": [{"name": "audio"}]},
                                                 {"op": "update", "tracks": [{"parentName": "video",
                                                                              "bitrate": 3_000_000}]}]}


def publisher(conn, unsubscribed: list, later: dict) -> None:
    """Catalog group 0: object 0 (video only) by the joining FETCH; object 1 (adds audio) on the
    catalog subscription once video is asked for; once audio is asked for, its frame; object 2
    (removes audio, raises video's bitrate) when the test calls ``later["drop_audio"]``. Ends
    when audio is let go."""
    session = conn.session
    aliases = iter(range(100))
    requests: dict[str, tuple[int, int]] = {}  # track -> (request id, alias)
    catalog_stream: list[int] = []

    def send_frame(track: str) -> None:
        rid, alias = requests[track]
        sid = session.open_subgroup(alias, 0)
        session.send_object(sid, 0, b"frame of " + track.encode(), {EXT_TIMESCALE: 1000, EXT_TIMESTAMP: 40})
        session.end_subgroup(sid)

    def on_event(_conn, event) -> None:
        if isinstance(event, ev.SubscribeRequested):
            alias = next(aliases)
            requests[event.track_name] = (event.request_id, alias)
            session.subscribe_ok(event.request_id, alias, (0, 0) if event.track_name == CATALOG_TRACK else None)
            if event.track_name == "video":
                send_frame("video")
                catalog_stream.append(session.open_subgroup(requests[CATALOG_TRACK][1], 0, priority=0))
                session.send_object(catalog_stream[0], 1, json.dumps(ADD_AUDIO).encode())
            elif event.track_name == "audio":
                send_frame("audio")
        elif isinstance(event, ev.FetchRequested):
            session.fetch_ok(event.request_id, (0, 1))
            sid = session.open_fetch_stream(event.request_id)
            session.send_fetch_object(sid, 0, 0, Catalog("live/x", (VIDEO,), generated_at=1).to_json())
            session.end_fetch_stream(sid)
        elif isinstance(event, ev.Unsubscribed):
            unsubscribed.append(next(t for t, (rid, _) in requests.items() if rid == event.request_id))
            session.end_subgroup(catalog_stream[0])
            session.publish_done(requests[CATALOG_TRACK][0], PublishDoneStatus.TRACK_ENDED, 1)
            session.publish_done(requests["video"][0], PublishDoneStatus.TRACK_ENDED, 1)
        conn.flush()

    def drop_audio() -> None:
        session.send_object(catalog_stream[0], 2, json.dumps(DROP_AUDIO).encode())
        conn.flush()

    later["drop_audio"] = drop_audio
    conn.handler = on_event


async def test_delta_updates_add_and_remove_tracks(tmp_path):
    unsubscribed: list = []
    later: dict = {}
    def each(item) -> None:
        if isinstance(item, Frame) and item.track == "audio":
            later["drop_audio"]()  # the priority catalog stream would overtake the frame

    got = await subscribe_to_raw_publisher(tmp_path, lambda conn: publisher(conn, unsubscribed, later), deadline=10,
                                           each=each)
    catalogs = [i for i in got if isinstance(i, Catalog)]
    assert [[t.name for t in c.tracks] for c in catalogs] == [["video"], ["video", "audio"], ["video"]]
    assert catalogs[1].track("audio").sample_rate == 48000
    assert [c.track("video").bitrate for c in catalogs] == [2_000_000, 2_000_000, 3_000_000]
    assert sorted(bytes(f.payload) for f in got if isinstance(f, Frame)) == [b"frame of audio", b"frame of video"]
    assert unsubscribed == ["audio"]  # removed from the catalog: let go
