"""Interoperability with a third-party MoQT implementation (aiomoqt's interop client, draft 16).

The client runs its relay test cases against `rtmpq up` over real QUIC on loopback. Each case is
named with the result it must get (docs/interop.md gives the reasons).
"""

import asyncio
import re
import shutil
import sys
from pathlib import Path

import pytest

from rtmpq.config import IngestConfig, PublishConfig

from .conftest import announced, start_up_node

# Every case of the client's standard run (aiomoqt 0.13.3), with the result rtmpq must get; kept
# in step with docs/interop.md. A case that disappears, fails, or becomes a skip fails the test.
# (Its two FETCH cases are not in the standard run: test_aiomoqt_fetch_cases_pass runs them.)
EXPECTED_CASES: dict[str, str] = {
    "setup-only": "ok",
    "announce-only": "ok",
    "publish-namespace-done": "ok",
    "subscribe-error": "ok",
    "rendezvous-timeout": "skip",  # the client skips it: RENDEZVOUS_TIMEOUT is draft 18
    "announce-subscribe": "ok",
    "subscribe-before-announce": "ok",
    "data-subgroup-basic": "ok",
    "subscribe-namespace-lifecycle": "ok",
    "namespace-discovery": "ok",
    "publish-track-only": "ok",
    "publish-track-subscribe": "ok",
}


def tap_results(text: str) -> dict[str, str]:
    """TAP lines to {case: "ok" | "not ok" | "skip"}."""
    return {name: "skip" if skip else status
            for status, name, skip in re.findall(r"^(ok|not ok) \d+ - ([\w-]+)( # SKIP\b.*)?$", text, re.M)}


@pytest.fixture
async def node(tmp_path):
    n = await start_up_node(tmp_path)  # aioquic only: the peer under test is the other side
    yield n
    await n.close()


async def test_aiomoqt_interop_client_cases_pass(node):
    client = shutil.which("moq-interop-client") or str(Path(sys.executable).parent / "moq-interop-client")
    host, port = node.moq_address
    proc = await asyncio.create_subprocess_exec(
        client, "--draft", "16", "-r", f"moqt://{host}:{port}/", "--tls-disable-verify",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    text = out.decode(errors="replace")
    assert tap_results(text) == EXPECTED_CASES, text


@pytest.mark.parametrize("case", ["fetch", "join"])
async def test_aiomoqt_fetch_cases_pass(node, case):
    """The client's FETCH cases (not in its standard run): standalone FETCH of a group the relay
    forwarded, and SUBSCRIBE + joining FETCH one group back."""
    client = shutil.which("moq-interop-client") or str(Path(sys.executable).parent / "moq-interop-client")
    host, port = node.moq_address
    proc = await asyncio.create_subprocess_exec(
        client, "--draft", "16", "-r", f"moqt://{host}:{port}/", "--tls-disable-verify", "-t", case,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode(errors="replace")
    assert re.search(rf"^ok 1 - {case}$", text, re.M), text


async def test_rtmpq_publisher_through_aiomoqt_relay_to_rtmpq_subscriber(tmp_path):
    """ffmpeg -> rtmpq ingest --upstream -> aiomoqt's moq-interop-relay -> rtmpq subscriber."""

    from rtmpq.media.broadcast import BroadcastRegistry
    from rtmpq.media.frames import Frame
    from rtmpq.moq.client import subscribe_broadcast
    from rtmpq.moq.relay import MoqRelay
    from rtmpq.moq.tls import ensure_self_signed
    from rtmpq.moq.transport import connect_moq
    from rtmpq.nodes.remote import UpstreamLink
    from rtmpq.nodes.ingest import IngestNode

    from .conftest import free_port, need
    from .publishers import as_packets, ffmpeg_publish_args, probe_packets, run_process

    need("ffmpeg")
    cert, key = ensure_self_signed(tmp_path / "tls")
    port = free_port()
    relay_bin = shutil.which("moq-interop-relay") or str(Path(sys.executable).parent / "moq-interop-relay")
    third_party = await asyncio.create_subprocess_exec(
        relay_bin, "--bind", "127.0.0.1", "--port", str(port), "--quic", "--draft", "16", "--cert", str(cert),
        "--key", str(key), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    registry = BroadcastRegistry()
    rtmp = IngestNode(registry, IngestConfig(host="127.0.0.1", port=0), PublishConfig(grace_period=0))
    await rtmp.start()
    ingest = MoqRelay(registry)
    ingest.start()
    link = UpstreamLink(ingest, f"moqt://127.0.0.1:{port}", insecure=True, announce=True, use_for_unknown_tracks=False)
    try:
        await asyncio.sleep(1.0)
        link.start()
        await asyncio.wait_for(link.connected.wait(), 15)
        ref = str(tmp_path / "ref.flv")
        publisher = asyncio.create_task(run_process(ffmpeg_publish_args(f"rtmp://127.0.0.1:{rtmp.address[1]}/live/aio", ref, seconds=4)))
        await registry.wait_for("live/aio", 10)
        await asyncio.sleep(0.3)  # the announcement reaches the third-party relay
        frames = []
        async with connect_moq("127.0.0.1", port, insecure=True) as conn:
            async for item in subscribe_broadcast(conn, "live/aio"):  # ends with the broadcast
                if isinstance(item, Frame):
                    frames.append(item)
        rc, output = await publisher
        assert rc == 0, output
    finally:
        await link.close()
        ingest.stop()
        await rtmp.close()
        third_party.terminate()
        await third_party.wait()
    reference = probe_packets(ref)
    for track in ("video", "audio"):
        mine = sorted((f for f in frames if f.track == track), key=lambda f: (f.group, f.index))
        assert as_packets(mine) == [p for p in reference if p.track == track], track


@pytest.mark.parametrize("backend", ["aioquic", "aiopquic"])
async def test_aiomoqt_subscriber_two_relays_below_gets_the_status_objects(tmp_path, backend, monkeypatch):
    """A publisher ends video's groups with End of Group and the track with End of Track (no
    PUBLISH_DONE) at relay A; aiomoqt subscribes at relay B (--upstream A). It gets every object,
    the two status objects where the publisher put them, and PUBLISH_DONE (TRACK_ENDED). Before,
    the relays swallowed the status objects and A ended the track as soon as the groups it had seen
    ended: B, given the newest group first, ended it before the older group came, so aiomoqt got
    no End of Track, sometimes not the first group, and never its on_done."""
    from aiomoqt.client import MOQTClient
    from aiomoqt.track import SubscribedTrack
    from aiomoqt.types import GroupOrder

    from rtmpq.moq import relay as relay_module
    from rtmpq.moq.transport import connect_moq
    from rtmpq.moq.wire import ObjectStatus, PublishDoneStatus

    from .conftest import relay_below, serving_relay
    from .test_moq_object_status import FRAMES_PER_GROUP, answer_with_status_objects, media

    monkeypatch.setattr(relay_module, "LATE_STREAM_GRACE", 0.5)
    got, done = [], asyncio.Event()

    def on_object(msg, _size, _ts, group_id, _subgroup_id) -> None:
        group = getattr(msg, "group_id", None)
        got.append((group_id if group is None else group, msg.object_id, int(getattr(msg, "status", 0) or 0),
                    bytes(msg.payload or b"")))

    def on_done(msg) -> None:
        got.append(("PUBLISH_DONE", msg.status_code))
        done.set()

    async with serving_relay(tmp_path, backend) as (_relay, port_a), relay_below(tmp_path, backend, port_a) as port_b:
        async with connect_moq("127.0.0.1", port_a, insecure=True, backend=backend) as pub:
            await announced(pub)
            answer_with_status_objects(pub, ObjectStatus.END_OF_TRACK, ObjectStatus.END_OF_TRACK, [])
            client = MOQTClient("127.0.0.1", port_b, path="", use_quic=True, verify_tls=False)
            async with client.connect() as session:
                await session.client_session_init()
                track = SubscribedTrack(session, "live/x", "video", on_object=on_object, on_done=on_done)
                await track.subscribe(forward=None, group_order=GroupOrder.ASCENDING, filter_type=None)
                await asyncio.wait_for(done.wait(), 15)
                session.close()
    objects = [g for g in got if g[0] != "PUBLISH_DONE"]
    assert sorted(o[3] for o in objects if not o[2]) == sorted(media("video", 0) + media("video", 1))
    assert sorted((g, o, s) for g, o, s, p in objects if s) == [
        (0, FRAMES_PER_GROUP, ObjectStatus.END_OF_GROUP), (1, FRAMES_PER_GROUP, ObjectStatus.END_OF_TRACK)]
    assert ("PUBLISH_DONE", PublishDoneStatus.TRACK_ENDED) in got


async def test_aiomoqt_media_subscriber_reads_the_catalog_of_an_mp3_publish(tmp_path):
    """aiomoqt's MSF subscriber (SUBSCRIBE + joining FETCH on "catalog") reads the catalog of a
    publish rtmpq carries nothing of: no track, and what is not carried under rtmpq.notCarried,
    a field of its own it keeps as it came; the stream key is nowhere in it."""
    from aiomoqt.client import MOQTClient
    from aiomoqt.media.broadcast import MediaSubscriber

    from .conftest import need, until
    from .publishers import run_process
    from .test_not_carried import KEY, mp3_publish_args

    need("ffmpeg")
    node = await start_up_node(tmp_path, publish=PublishConfig(keys={KEY: "cam"}, grace_period=0))
    publisher = asyncio.create_task(run_process(
        mp3_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/{KEY}", seconds=30), timeout=60))
    try:
        await until(lambda: (b := node.registry.get("live/cam")) is not None and b.not_carried, 15, "the MP3 dropped")
        client = MOQTClient(*node.moq_address, path="", use_quic=True, verify_tls=False)
        async with client.connect() as session:
            await session.client_session_init()
            catalog = await MediaSubscriber(session, "live/cam").start(timeout=10)
            session.close()
    finally:
        publisher.cancel()
        await asyncio.gather(publisher, return_exceptions=True)
        await node.close()
    assert catalog.tracks == [] and catalog.validate() == []
    assert catalog.extra["rtmpq.notCarried"] == [{"kind": "audio", "codec": "MP3", "flv": ".mp3",
                                                  "carried": "AAC, Opus, AC-3, E-AC-3", "ffmpeg": "-c:a aac"}]
    assert KEY not in catalog.to_json()


def test_aiomoqt_and_rtmpq_read_each_others_bytes_for_what_the_draft_16_audit_changed():
    """Byte-level interop with aiomoqt's own d16 codec for what the conformance audit touched:
    OBJECT_DATAGRAMs (rtmpq reads them now), PUBLISH_NAMESPACE_CANCEL (decoded now), and the
    FETCH stream rtmpq writes after an End of Range marker (every field stated)."""
    from aiomoqt.context import profile_for
    from aiomoqt.messages.data import FetchObject, ObjectDatagram
    from aiomoqt.messages.namespace import PublishNamespaceCancel
    from aiomoqt.utils.buffer import Buffer

    from rtmpq.moq import wire

    prof = profile_for(16)
    theirs = ObjectDatagram(track_alias=2, group_id=5, object_id=3, publisher_priority=7, extensions={0x10: 40},
                            payload=b"abcd", end_of_group=True).serialize(prof=prof).data
    assert wire.decode_object_datagram(theirs) == wire.ObjectDatagram(2, 5, 3, 7, {0x10: 40}, b"abcd",
                                                                      wire.ObjectStatus.NORMAL, True)
    cancel = PublishNamespaceCancel(request_id=4, error_code=0x20, reason="bored").serialize(prof=prof).data
    assert wire.decode_control_message(cancel)[0] == wire.PublishNamespaceCancel(4, wire.RequestError.UNINTERESTED,
                                                                                 "bored")
    encoder = wire.FetchObjectEncoder()
    ours = (encoder.object_header(4, 0, 0, 2, 1, None) + b"a" + encoder.end_of_range(4, 5, unknown=True)
            + encoder.object_header(4, 0, 6, 2, 1, None) + b"b")
    buf, prior, got = Buffer(data=ours), None, []
    while buf.tell() < len(ours):
        obj = FetchObject.deserialize(buf, prior=prior, prof=prof)
        got.append((obj.group_id, obj.object_id, obj.publisher_priority, obj.payload, bool(obj.end_of_range)))
        prior = obj
    assert got == [(4, 0, 2, b"a", False), (4, 5, got[1][2], b"", True), (4, 6, 2, b"b", False)]
