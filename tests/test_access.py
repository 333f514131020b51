"""Secret stream keys mapped to public names, signed publish keys, playback tokens on HLS."""

import asyncio
import json
import logging
import re
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from rtmpq.auth.access import Access, AccessDenied
from rtmpq.auth.refusals import RefusedPublishes, counted_address
from rtmpq.auth.tokens import CLOCK_SKEW_LEEWAY, mint_session_token, mint_token, verify_token
from rtmpq.config import AuthConfig, IngestConfig, PublishConfig
from rtmpq.media.catalog import Catalog
from rtmpq.moq.client import subscribe_broadcast
from rtmpq.moq.transport import connect_moq

from .conftest import http_get, need, start_up_node, until
from .publishers import end_live_publish, ffmpeg_publish_args, ffmpeg_publish_only_args, run_process
from .rtmp_client import TcpPublisher
from .test_ops import samples

KEY = "sk-1f9c2a77e0"
SECRET = "a-test-secret-that-is-long-enough-for-hs256"


# -- the decisions, in memory -------------------------------------------------------------------
def test_keys_map_to_public_names_and_unknown_keys_are_refused():
    access = Access(PublishConfig(keys={KEY: "studio", "sk-other": "news/desk"}))
    assert access.publish_name("live", KEY, "", 0) == "live/studio"
    assert access.publish_name("live", "sk-other", "", 0) == "news/desk"
    with pytest.raises(AccessDenied, match="unknown stream key") as info:
        access.publish_name("live", "studio", "", 0)  # the public name is not a key
    assert KEY not in str(info.value)


def test_signed_publish_keys_as_key_or_query():
    now = time.time()
    access = Access(PublishConfig(), AuthConfig(secret=SECRET))
    token = mint_token(SECRET, "live/cam1", "publish", 60, now=now)
    assert access.publish_name("live", token, "", now) == "live/cam1"  # the key is the token
    assert access.publish_name("live", "cam1", f"token={token}", now) == "live/cam1"
    with pytest.raises(AccessDenied):
        access.publish_name("live", "cam2", f"token={token}", now)  # for another name
    with pytest.raises(AccessDenied, match="expired"):
        access.publish_name("live", token, "", now + 3600)
    viewer = mint_token(SECRET, "live/cam1", "subscribe", 60, now=now)
    with pytest.raises(AccessDenied):
        access.publish_name("live", viewer, "", now)  # watching does not give the right to publish
    with pytest.raises(AccessDenied):
        access.publish_name("live", "cam1", "", now)  # no key, no token


def test_an_app_wide_publish_token_as_the_key_names_no_broadcast():
    # `rtmpq token --act publish --sub live` covers every name in app live; as the stream key it
    # names none of them (it once published "live/live"), while with ?token= the key names one
    now = time.time()
    access = Access(PublishConfig(), AuthConfig(secret=SECRET))
    app_wide = mint_token(SECRET, "live", "publish", 60, now=now)
    with pytest.raises(AccessDenied, match=r"covers an app, not one broadcast.*rtmp://HOST/live/<name>\?token=") as info:
        access.publish_name("live", app_wide, "", now)
    assert app_wide not in str(info.value)
    assert access.publish_name("live", "cam7", f"token={app_wide}", now) == "live/cam7"
    everything = mint_token(SECRET, "", "publish", 60, now=now)
    with pytest.raises(AccessDenied, match="names no broadcast"):
        access.publish_name("live", everything, "", now)


def test_hls_sessions_outlive_the_viewers_token_for_its_one_broadcast_and_no_longer():
    now = time.time()
    auth = AuthConfig(secret=SECRET, require_playback_token=True, playback_session=3600)
    access = Access(PublishConfig(), auth)
    viewer = mint_token(SECRET, "live", "subscribe", 60, now=now)  # a whole app, for a minute
    session = access.may_play_hls("live/show", viewer, now)
    assert session and session != viewer
    claims = verify_token(session, SECRET, act="subscribe", path="live/show", now=now, session_ok=True)
    assert claims.session and claims.sub == "live/show" and claims.exp == int(now + 3600)  # never wider
    # an hour on, the viewer's token is long gone; the session still plays its broadcast, yielding
    # itself (a reload never extends it), and nothing else
    later = now + 3000
    assert access.may_play_hls("live/show", session, later) == session
    another_edge = Access(PublishConfig(), AuthConfig(secret=SECRET, require_playback_token=True))
    assert another_edge.may_play_hls("live/show", session, later) == session  # stateless: any edge with the secret
    with pytest.raises(AccessDenied, match="expired"):
        access.may_play_hls("live/show", viewer, later)  # playback cannot start with it
    with pytest.raises(AccessDenied, match="wrong path"):
        access.may_play_hls("live/other", session, later)
    for refuse in (lambda: access.may_subscribe("live/show", session, later),  # MoQ SUBSCRIBE / FETCH
                   lambda: access.may_list("live/show", session, later),
                   lambda: access.may_publish_over_moq("live/show", session, later),
                   lambda: access.publish_name("live", session, "", later),  # as the stream key
                   lambda: access.publish_name("live", "show", f"token={session}", later)):
        with pytest.raises(AccessDenied):
            refuse()
    with pytest.raises(AccessDenied, match="expired"):
        access.may_play_hls("live/show", session, now + 3600 + CLOCK_SKEW_LEEWAY)
    assert Access(PublishConfig(), AuthConfig(secret=SECRET)).may_play_hls("live/show", viewer, now) is None


def test_an_open_node_publishes_the_key_as_the_name():
    assert Access().open and Access().publish_name("live", "anything", "", 0) == "live/anything"


# -- end to end ---------------------------------------------------------------------------------
async def test_secret_key_publishes_at_its_public_name_and_appears_nowhere(tmp_path, caplog):
    need("ffmpeg")
    caplog.set_level(logging.DEBUG)
    node = await start_up_node(tmp_path, publish=PublishConfig(keys={KEY: "studio"}, grace_period=0))
    node.config.rtmp.record_dir = tmp_path / "rec"
    try:
        rtmp = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live"
        # a wrong key is refused, with a status that says why
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/sk-wrong", seconds=1))
        assert rc != 0 and "unknown stream key" in out, out
        host, port = node.moq_address
        frames, catalogs = 0, []

        async def watch():
            nonlocal frames
            async with connect_moq(host, port, insecure=True) as conn:
                async for item in subscribe_broadcast(conn, "live/studio", wait=20):
                    if isinstance(item, Catalog):
                        catalogs.append(item.to_json().decode())
                    else:
                        frames += 1

        watcher = asyncio.create_task(watch())
        publish = asyncio.create_task(run_process(ffmpeg_publish_args(f"{rtmp}/{KEY}", str(tmp_path / "ref.flv"),
                                                                      seconds=4)))
        base = f"http://127.0.0.1:{node.edge.address[1]}/live"
        status, playlist = await http_get(f"{base}/studio/index.m3u8", until_live=True)
        assert status == 200 and b"#EXT-X-STREAM-INF" in playlist
        status, _ = await http_get(f"{base}/{KEY}/index.m3u8")
        assert status != 200  # the key is not a playback path
        rc, out = await publish
        assert rc == 0, out
        await asyncio.wait_for(watcher, 20)
        assert frames > 100 and catalogs
        recordings = list((tmp_path / "rec").rglob("*.flv"))
        assert recordings and all("studio" in str(p) for p in recordings)
        seen = [caplog.text, *catalogs, playlist.decode(), *(str(p) for p in recordings)]
        assert not any(KEY in text for text in seen)
        assert "live/studio" in caplog.text  # logs name the broadcast by its public name
    finally:
        await node.close()


async def test_playback_tokens_on_hls(tmp_path):
    need("ffmpeg")
    auth = AuthConfig(secret=SECRET, require_playback_token=True)
    node = await start_up_node(tmp_path, auth=auth, publish=PublishConfig(grace_period=0))
    try:
        now = time.time()
        publish_key = mint_token(SECRET, "live/show", "publish", 60, now=now)
        publish = asyncio.create_task(run_process(ffmpeg_publish_args(
            f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/{publish_key}", str(tmp_path / "ref.flv"), seconds=5)))
        base = f"http://127.0.0.1:{node.edge.address[1]}/live/show"
        good = mint_token(SECRET, "live/show", "subscribe", 60, now=now)
        expired = mint_token(SECRET, "live/show", "subscribe", 1, now=now - 120)
        other = mint_token(SECRET, "live/other", "subscribe", 60, now=now)
        forged = mint_token("another-secret-that-is-long-enough-xx", "live/show", "subscribe", 60, now=now)
        for token in (None, expired, other, forged):
            query = f"?token={token}" if token else ""
            status, body = await http_get(f"{base}/index.m3u8{query}")
            assert status == 403, (status, body)
            assert token is None or token.encode() not in body
        status, multivariant = await http_get(f"{base}/index.m3u8?token={good}", until_live=True)
        assert status == 200, multivariant
        status, media = await http_get(f"{base}/video.m3u8?token={good}")
        assert status == 200
        uris = [line for line in media.decode().splitlines() if ".m4s" in line or "init.mp4" in line]
        assert uris and all("token=" in line for line in uris)  # a session token (test_hls_sessions_...)
        assert good not in multivariant.decode() + media.decode()  # the viewer's own is never copied
        status, _ = await http_get(f"{base}/v-init.mp4")  # media needs the token as well as playlists
        assert status == 403
        rc, out = await run_process(["ffprobe", "-v", "error", "-show_entries", "stream=codec_type", "-of", "json",
                                     f"{base}/index.m3u8?token={good}"], timeout=40)
        assert rc == 0, out
        assert {s["codec_type"] for s in json.loads(out)["streams"]} == {"video", "audio"}
        rc, out = await publish
        assert rc == 0, out
    finally:
        await node.close()


async def test_a_refused_hls_viewer_is_logged_once_with_the_reason_and_never_its_token(tmp_path, caplog):
    """A viewer refused (403) read why in the answer; the operator could not (nothing was logged,
    so "my viewers cannot play" left no trace). Logged with the viewer's address and the reason,
    once per REFUSAL_LOG_INTERVAL per viewer and broadcast however often the player retries, and
    without the token."""
    caplog.set_level(logging.INFO, logger="rtmpq.edge")
    node = await start_up_node(tmp_path, auth=AuthConfig(secret=SECRET, require_playback_token=True))
    try:
        base = f"http://127.0.0.1:{node.edge.address[1]}/live/show"
        expired = mint_token(SECRET, "live/show", "subscribe", 1, now=time.time() - 120)
        for _ in range(3):  # a player retrying
            for query in ("", f"?token={expired}"):
                status, _ = await http_get(f"{base}/video.m3u8{query}")
                assert status == 403
        status, _ = await http_get(f"http://127.0.0.1:{node.edge.address[1]}/live/other/video.m3u8")
        assert status == 403
    finally:
        await node.close()
    said = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    # main: nothing. One line per viewer and broadcast (the first refusal's reason), live/other apart
    assert len(said) == 2, said
    assert "viewer 127.0.0.1 refused for live/show: a token is required" in said[0], said
    assert "live/other" in said[1]
    assert expired not in caplog.text


def _uri_after(playlist: bytes, tag: str) -> str:
    """The URI of the last ``tag`` line of a playlist (a URI="..." attribute, or the next line)."""
    lines = playlist.decode().splitlines()
    i = max(i for i, line in enumerate(lines) if line.startswith(tag))
    found = re.search(r'URI="([^"]+)"', lines[i])
    return found[1] if found else lines[i + 1]


async def test_an_hls_viewer_keeps_watching_past_its_tokens_expiry(tmp_path):
    """Checked when playback starts: a player that started keeps reloading its playlists and
    fetching parts well past its token's expiry (it used to get 403 and stop, an hour in with
    `rtmpq token`'s default ttl); starting with the expired token is refused."""
    need("ffmpeg")
    node = await start_up_node(tmp_path, auth=AuthConfig(secret=SECRET, require_playback_token=True),
                               publish=PublishConfig(keys={KEY: "studio"}, grace_period=0))
    try:
        publish = asyncio.create_task(run_process(ffmpeg_publish_only_args(
            f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/{KEY}", seconds=20), timeout=60))
        base = f"http://127.0.0.1:{node.edge.address[1]}/live"
        await node.registry.wait_for("live/studio", 10)
        # a token at its expiry, accepted for the clock-skew leeway more: playback starts within
        # that and must go on past it
        viewer = mint_token(SECRET, "live/studio", "subscribe", CLOCK_SKEW_LEEWAY, now=time.time() - CLOCK_SKEW_LEEWAY)
        status, multivariant = await http_get(f"{base}/studio/index.m3u8?token={viewer}", until_live=True)
        assert status == 200, multivariant
        media_uri = _uri_after(multivariant, "#EXT-X-STREAM-INF")  # what a player reloads
        session = parse_qs(urlsplit(media_uri).query)["token"][0]
        assert viewer not in multivariant.decode()

        async def reload_and_fetch() -> str:
            status, media = await http_get(f"{base}/studio/{media_uri}")
            assert status == 200, (status, media)
            assert viewer not in media.decode()
            part = _uri_after(media, "#EXT-X-PART:")
            status, data = await http_get(f"{base}/studio/{part}")
            assert status == 200 and data, status
            return part.partition("?")[0]

        expired = verify_token(viewer, SECRET, act="subscribe", path="live/studio", now=time.time()).exp \
            + CLOCK_SKEW_LEEWAY
        parts, past = set(), set()  # fetched before, and well past, the expiry
        deadline = expired + 20
        while len(past) < 3:  # a player reloading as it plays
            assert time.time() < deadline, (parts, past)
            (past if time.time() > expired + 2 else parts).add(await reload_and_fetch())
            await asyncio.sleep(0.2)
        assert parts and not past & parts  # new media, still live
        # starting afresh with the expired token is refused ...
        status, _ = await http_get(f"{base}/studio/index.m3u8?token={viewer}")
        assert status == 403
        # ... the session token, presented to the multivariant, gives itself (no later expiry) ...
        status, again = await http_get(f"{base}/studio/index.m3u8?token={session}")
        assert status == 200 and parse_qs(urlsplit(_uri_after(again, "#EXT-X-STREAM-INF")).query)["token"] == [session]
        # ... and it plays no other broadcast; an expired one plays nothing
        for url in (f"{base}/other/index.m3u8?token={session}", f"{base}/other/v-init.mp4?token={session}",
                    f"{base}/studio/video.m3u8?token={mint_session_token(SECRET, 'live/studio', 1, now=time.time() - 60)}"):
            status, _ = await http_get(url)
            assert status == 403, url
        await end_live_publish(publish)
    finally:
        await node.close()


# -- tokens over MoQ ----------------------------------------------------------------------------
class Events:
    """A MoQ connection's events in a queue, for requests the client API does not wrap."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.queue: asyncio.Queue = asyncio.Queue()
        conn.handler = lambda _c, event: self.queue.put_nowait(event)

    async def answer(self, request_id: int):
        async with asyncio.timeout(10):
            while True:
                event = await self.queue.get()
                if getattr(event, "request_id", None) == request_id and type(event).__name__ in (
                        "RequestAccepted", "RequestFailed"):
                    return event


async def test_moq_requests_need_tokens_where_auth_says_so(tmp_path):
    from rtmpq.moq import events as ev
    from rtmpq.moq.client import FetchError, SubscribeError, fetch_track
    from rtmpq.moq.wire import RequestError

    need("ffmpeg")
    node = await start_up_node(tmp_path, auth=AuthConfig(secret=SECRET, require_playback_token=True),
                               publish=PublishConfig(grace_period=0))
    try:
        now = time.time()
        host, port = node.moq_address
        viewer = mint_token(SECRET, "live/show", "subscribe", 60, now=now)
        node_token = mint_token(SECRET, "", "relay", 60, now=now)
        publish = asyncio.create_task(run_process(ffmpeg_publish_args(
            f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/show?token={mint_token(SECRET, 'live/show', 'publish', 60, now=now)}",
            str(tmp_path / "ref.flv"), seconds=4)))
        async with connect_moq(host, port, insecure=True) as conn:
            for token in (None, mint_token(SECRET, "live/other", "subscribe", 60, now=now)):
                with pytest.raises(SubscribeError) as info:
                    async for _ in subscribe_broadcast(conn, "live/show", wait=20, authorization=token):
                        pass
                assert info.value.code == RequestError.UNAUTHORIZED
            with pytest.raises(FetchError) as fetch_info:
                await fetch_track(conn, "live/show", "video", (0, 0), (1, 0))
            assert fetch_info.value.code == RequestError.UNAUTHORIZED
        # a viewer's token plays its broadcast, sent with the requests or in CLIENT_SETUP
        for setup, request in ((None, viewer), (viewer, None)):
            frames = 0
            async with connect_moq(host, port, insecure=True, token=setup) as conn:
                async for item in subscribe_broadcast(conn, "live/show", wait=20, authorization=request):
                    frames += not isinstance(item, Catalog)
                    if frames >= 30:
                        break
            assert frames >= 30
        # listing: a viewer may wait for its one name, not list the app; a node may
        async with connect_moq(host, port, insecure=True) as conn:
            events = Events(conn)
            refused = conn.session.subscribe_namespace(("live",), authorization=viewer)
            conn.flush()
            assert isinstance(await events.answer(refused), ev.RequestFailed)
            one = conn.session.subscribe_namespace(("live", "show"), authorization=viewer)
            conn.flush()
            assert isinstance(await events.answer(one), ev.RequestAccepted)
        async with connect_moq(host, port, insecure=True) as conn:  # (("live",) overlaps: one per session)
            events = Events(conn)
            listing = conn.session.subscribe_namespace(("live",), authorization=node_token)
            conn.flush()
            assert isinstance(await events.answer(listing), ev.RequestAccepted)
        # publishing over MoQ: a namespace held by a session is not taken by one without a token
        async with connect_moq(host, port, insecure=True, token=node_token) as owner, \
                connect_moq(host, port, insecure=True) as intruder, \
                connect_moq(host, port, insecure=True, token=node_token) as restarted:
            owner_events, intruder_events, restarted_events = Events(owner), Events(intruder), Events(restarted)
            rid = owner.session.publish_namespace(("live", "relayed"))
            owner.flush()
            assert isinstance(await owner_events.answer(rid), ev.RequestAccepted)
            rid = intruder.session.publish_namespace(("live", "relayed"))
            intruder.flush()
            failed = await intruder_events.answer(rid)
            assert isinstance(failed, ev.RequestFailed) and failed.error_code == RequestError.UNAUTHORIZED
            rid = restarted.session.publish_namespace(("live", "relayed"))
            restarted.flush()
            assert isinstance(await restarted_events.answer(rid), ev.RequestAccepted)  # an authorized takeover
        rc, out = await publish
        assert rc == 0, out
    finally:
        await node.close()


async def test_a_refused_moq_request_is_logged_with_what_it_asked_for_and_never_its_token(tmp_path, caplog):
    """A MoQ viewer refused for a token of another broadcast: the log used to say
    "SubscribeRequested refused: token refused: wrong path" (a class name, no broadcast); the
    operator now reads which request of which broadcast, as for a refused HLS viewer."""
    from rtmpq.moq.client import SubscribeError

    caplog.set_level(logging.WARNING, logger="rtmpq.moq")
    node = await start_up_node(tmp_path, auth=AuthConfig(secret=SECRET, require_playback_token=True))
    try:
        other = mint_token(SECRET, "live/other", "subscribe", 60, now=time.time())
        async with connect_moq(*node.moq_address, insecure=True, backend=node.moq_config.backend) as conn:
            with pytest.raises(SubscribeError):
                async for _ in subscribe_broadcast(conn, "live/show", wait=5, authorization=other):
                    pass
        said = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
        assert said and "SUBSCRIBE to live/show refused: token refused: wrong path" in said[0], said
        assert other not in caplog.text
    finally:
        await node.close()


@pytest.mark.parametrize("backend, exposed", [("aioquic", False), ("aiopquic", True)])
async def test_an_open_node_says_it_listens_beyond_loopback_when_its_moq_port_does(tmp_path, caplog, backend, exposed):
    """Every listener asked for 127.0.0.1; picoquic binds the MoQ port on every interface anyway,
    so an open node on aiopquic is reachable from the network and must say how to close it."""
    from rtmpq.nodes.up import run_up

    from .conftest import local_config, until

    caplog.set_level(logging.INFO, "rtmpq")
    stop = asyncio.Event()
    task = asyncio.create_task(run_up(local_config(tmp_path, backend), stop))
    try:
        await until(lambda: "MoQ (draft 16" in caplog.text or task.done(), what="the node to listen")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert ("this node listens beyond loopback" in caplog.text) == exposed, caplog.text


@pytest.mark.parametrize("token", ["none", "wrong", "good"])
async def test_an_ingest_says_when_its_upstream_refuses_its_broadcast(tmp_path, caplog, token):
    """`rtmpq ingest --upstream` into a relay with an [auth] secret: without a node token, or with
    one signed with another secret, the relay refuses its PUBLISH_NAMESPACE. The ingest logged
    "announced live/x upstream" all the same, and the broadcast was simply not there below (found
    deploying the nodes apart); now it says the upstream refused it, why, and what to set."""
    from rtmpq.media.broadcast import BroadcastRegistry
    from rtmpq.moq.relay import MoqRelay
    from rtmpq.nodes.remote import UpstreamLink

    caplog.set_level(logging.INFO, logger="rtmpq.nodes")
    node = await start_up_node(tmp_path, auth=AuthConfig(secret=SECRET))
    registry = BroadcastRegistry()
    ingest = MoqRelay(registry)
    ingest.start()
    now = time.time()
    presented = {"none": None, "good": mint_token(SECRET, "", "relay", 60, now=now),
                 "wrong": mint_token("another-secret-that-is-long-enough-for-hs256", "", "relay", 60, now=now)}[token]
    host, port = node.moq_address
    link = UpstreamLink(ingest, f"moqt://{host}:{port}", insecure=True, backend=node.moq_config.backend,
                        announce=True, use_for_unknown_tracks=False, token=lambda: presented)
    link.start()
    try:
        await asyncio.wait_for(link.connected.wait(), 10)
        registry.publish("live/x")
        said = "announced live/x upstream" if token == "good" else "refused to take live/x"
        await until(lambda: any(said in r.getMessage() for r in caplog.records), 10, repr(said))
        published = node.moq.published_names()
    finally:
        await link.close()
        ingest.stop()
        await node.close()
    messages = [r.getMessage() for r in caplog.records if r.name == "rtmpq.nodes"]
    if token == "good":
        assert not [m for m in messages if "refused" in m]
        assert "live/x" in published
    else:
        [refusal] = [m for m in messages if "refused to take live/x" in m]
        assert "announced live/x" not in " ".join(messages)
        assert ("a token is required" if token == "none" else "bad signature") in refusal, refusal
        assert "[auth] node_token" in refusal and "rtmpq token --act relay" in refusal
        assert ("no token to present" in refusal) == (token == "none"), refusal


async def test_a_relay_without_a_node_token_says_so_below_and_in_its_log(tmp_path, caplog):
    """Relay B (--upstream A) has no node token; A requires playback tokens. A viewer with a valid
    token subscribes at B: A refuses B. B used to pass on A's words ("a token is required to
    subscribe live/x") to the viewer, who had given one, and log nothing (A logged B's address
    alone); now the viewer reads that the relay above refused this relay, and B's log says what
    to set (found deploying the nodes apart)."""
    from rtmpq.moq.client import SubscribeError
    from rtmpq.moq.wire import RequestError

    from .test_moq_fetch import relay_below_node

    need("ffmpeg")
    caplog.set_level(logging.WARNING, logger="rtmpq.moq")
    node = await start_up_node(tmp_path, auth=AuthConfig(secret=SECRET, require_playback_token=True))
    now = time.time()
    publish = asyncio.create_task(run_process(ffmpeg_publish_args(
        f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/x?token={mint_token(SECRET, 'live/x', 'publish', 60, now=now)}",
        str(tmp_path / "ref.flv"), seconds=4)))
    backend = node.moq_config.backend
    try:
        await node.registry.wait_for("live/x", 10)
        viewer = mint_token(SECRET, "live/x", "subscribe", 60, now=now)
        async with relay_below_node(node, tmp_path) as port_b, \
                connect_moq("127.0.0.1", port_b, insecure=True, backend=backend) as conn:
            with pytest.raises(SubscribeError) as info:
                async for _ in subscribe_broadcast(conn, "live/x", wait=10, authorization=viewer):
                    pass
        assert info.value.code == RequestError.UNAUTHORIZED
        assert "the relay above refused this relay" in str(info.value), info.value
        said = [r.getMessage() for r in caplog.records if "refused this relay" in r.getMessage()]
        assert said and "[auth] node_token" in said[0] and "rtmpq token --act relay" in said[0], said
        # and its listing of the broadcasts above (SUBSCRIBE_NAMESPACE) was refused too: said once
        listing = [r.getMessage() for r in caplog.records if "refused to list its broadcasts" in r.getMessage()]
        assert len(listing) == 1 and "[auth] node_token" in listing[0], listing
    finally:
        await publish
        await node.close()


# -- refused publishes: counted, and guessing slowed down ---------------------------------------
def test_an_address_that_keeps_being_refused_cools_down_and_others_do_not():
    refusals = RefusedPublishes(limit=3, window=10, cooldown=30, max_addresses=100)
    assert refusals.refused("10.0.0.1", 0) == 0 and refusals.refused("10.0.0.1", 4) == 0
    assert refusals.refused("10.0.0.1", 20) == 0  # the first two fell out of the window
    assert refusals.refused("10.0.0.1", 21) == 0
    assert refusals.refused("10.0.0.2", 21) == 0  # another address counts apart
    assert refusals.cooldown_left("10.0.0.1", 22) == 0
    assert refusals.refused("10.0.0.1", 22) == 3  # the third within 10 s: the cool-down begins, said once
    assert refusals.cooldown_left("10.0.0.1", 22) == 30
    assert refusals.cooldown_left("10.0.0.1", 51) == 1
    assert refusals.cooldown_left("10.0.0.2", 23) == 0
    assert refusals.cooldown_left("10.0.0.1", 52) == 0  # over: counting starts again from nothing
    assert refusals.refused("10.0.0.1", 53) == 0 and refusals.refused("10.0.0.1", 54) == 0
    assert refusals.refused("10.0.0.1", 55) == 3
    off = RefusedPublishes(limit=0)
    assert not any(off.refused("10.0.0.1", t) for t in range(100)) and len(off) == 0


def test_an_ipv6_client_is_counted_by_its_64_and_an_ipv4_one_whole():
    """A host picks any address of its /64: counted whole, each gave a guesser 10 more tries."""
    refusals = RefusedPublishes(limit=3, window=60, cooldown=30)
    for i, address in enumerate(("2001:db8:1:2::1", "2001:db8:1:2:aaaa::7", "2001:DB8:1:2:ffff:ffff:ffff:ffff")):
        assert refusals.cooldown_left(address, i) == 0
        counted = refusals.refused(address, i)
    assert counted == 3  # three addresses of one /64: one guesser, cooling down
    assert refusals.cooldown_left("2001:db8:1:2::1234", 3) == 29
    assert refusals.cooldown_left("2001:db8:1:3::1", 3) == 0  # the next /64 is another client
    for i in range(3):  # IPv4 (mapped or not) stays whole
        refusals.refused("::ffff:192.0.2.1", 10 + i)
    assert refusals.cooldown_left("192.0.2.1", 13) == 29 and refusals.cooldown_left("192.0.2.2", 13) == 0
    assert counted_address("fe80::1%eth0") == "fe80::/64" and counted_address("?") == "?"


def test_the_addresses_tracked_are_bounded_in_count():
    refusals = RefusedPublishes(limit=2, window=60, cooldown=60, max_addresses=50)
    refusals.refused("10.0.0.1", 0)
    assert refusals.refused("10.0.0.1", 1) == 2  # cooling down
    for i in range(1000):  # a spread of addresses, each refused once
        refusals.refused(f"10.1.{i // 256}.{i % 256}", 2 + i / 1000)
    assert len(refusals) == 50
    # forgotten first: the address refused longest ago; and once their window is over, the rest
    refusals.refused("10.9.9.9", 200)
    assert len(refusals) == 1


async def _publish_refusals(node) -> tuple[str, dict[str, float]]:
    """/metrics as scraped, and its RTMP errors by reason."""
    async with httpx.AsyncClient(timeout=20) as client:
        page = (await client.get(f"http://127.0.0.1:{node.edge.address[1]}/metrics")).text
    return page, {dict(labels)["reason"]: value for (name, labels), value in samples(page).items()
                  if name == "rtmpq_errors_total" and dict(labels).get("protocol") == "rtmp"}


async def test_refused_publishes_are_counted_by_reason_in_metrics_without_keys_or_tokens(tmp_path):
    """ffmpeg publishing with an unknown key, with a token for another name, and to a name that is
    live from elsewhere: each is refused with a status that says why, and counted in /metrics as
    rtmpq_errors_total{protocol="rtmp", reason}; the keys and the token are nowhere on the page."""
    need("ffmpeg")
    now = time.time()
    node = await start_up_node(tmp_path, publish=PublishConfig(keys={KEY: "taken"}, grace_period=0),
                               auth=AuthConfig(secret=SECRET))
    token = mint_token(SECRET, "live/cam1", "publish", 60, now=now)
    try:
        rtmp = f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live"
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/sk-guessed-0042", seconds=1))
        assert rc != 0 and "unknown stream key" in out, out
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/cam2?token={token}", seconds=1))
        assert rc != 0 and "token refused: wrong path" in out, out
        node.registry.publish("live/taken")  # as a broadcast relayed here from another node is
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/{KEY}", seconds=1))
        assert rc != 0 and "Stream already publishing" in out, out
        page, counted = await _publish_refusals(node)
    finally:
        await node.close()
    assert counted == {"unknown_key": 1, "token_refused": 1, "name_in_use": 1}, counted
    assert not any(secret in page for secret in ("sk-guessed-0042", KEY, token))


async def test_an_address_guessing_stream_keys_is_made_to_wait_and_others_publish(tmp_path, caplog):
    """[rtmp] max_refused_publishes wrong keys from one address start its cool-down: its next
    publish, even with the right key, is refused with a status telling ffmpeg to wait, while a
    publisher from another address goes live. One log line per address per cool-down, with the
    address and the count, never a key; the refusals in the cool-down are counted in /metrics."""
    need("ffmpeg")
    caplog.set_level(logging.INFO)
    node = await start_up_node(tmp_path, publish=PublishConfig(keys={KEY: "studio"}, grace_period=0),
                               rtmp=IngestConfig(host="127.0.0.1", port=0, max_refused_publishes=3))
    try:
        port = node.rtmp.address[1]
        rtmp = f"rtmp://127.0.0.1:{port}/live"
        for i in range(3):  # a guesser at 127.0.0.2
            with pytest.raises(ConnectionRefusedError, match="unknown stream key"):
                await TcpPublisher.publish(port, f"sk-guess-{i}", source="127.0.0.2")
        with pytest.raises(ConnectionRefusedError, match=r"too many refused publishes from your address; try again in \d+ s"):
            await TcpPublisher.publish(port, KEY, source="127.0.0.2")
        # ffmpeg at 127.0.0.1 publishes with the right key meanwhile
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/{KEY}", seconds=1))
        assert rc == 0, out
        # ffmpeg guessing: three wrong keys, then even the right one is refused, and it says why
        for i in range(3):
            rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/sk-ffmpeg-guess-{i}", seconds=1))
            assert rc != 0 and "unknown stream key" in out, out
        rc, out = await run_process(ffmpeg_publish_only_args(f"{rtmp}/{KEY}", seconds=1))
        assert rc != 0 and re.search(r"Server error: publish refused: too many refused publishes from your address; try again in \d+ s", out), out
        with pytest.raises(ConnectionRefusedError, match="try again in"):  # still cooling down
            await TcpPublisher.publish(port, KEY, source="127.0.0.2")
        page, counted = await _publish_refusals(node)
    finally:
        await node.close()
    assert counted == {"unknown_key": 6, "max_refused_publishes": 3}, counted
    lines = [r.getMessage() for r in caplog.records if "refusing every publish" in r.getMessage()]
    assert len(lines) == 2, lines
    for address in ("127.0.0.2", "127.0.0.1"):
        line = rf"{address}:\d+: 3 publishes refused within 60 s: refusing every publish from {address} for 120 s"
        assert any(re.fullmatch(line.replace(".", r"\."), seen) for seen in lines), lines
    assert "sk-guess" not in caplog.text and "sk-ffmpeg-guess" not in caplog.text and KEY not in caplog.text
    assert "sk-guess" not in page and KEY not in page


async def test_rtmpq_sub_takes_its_playback_token_from_the_environment(tmp_path):
    """`rtmpq sub --token JWT` shows the token to every user of the host in `ps`; RTMPQ_TOKEN
    carries it where only the user's own processes read it."""
    import os
    import sys

    need("ffmpeg")
    node = await start_up_node(tmp_path, auth=AuthConfig(secret=SECRET, require_playback_token=True),
                               publish=PublishConfig(grace_period=0))
    try:
        now = time.time()
        publish = asyncio.create_task(run_process(ffmpeg_publish_args(
            f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/show?token={mint_token(SECRET, 'live/show', 'publish', 60, now=now)}",
            str(tmp_path / "ref.flv"), seconds=30), timeout=60))
        url = f"moqt://127.0.0.1:{node.moq_address[1]}/live/show"
        viewer = mint_token(SECRET, "live/show", "subscribe", 60, now=now)
        for token, frames in ((None, False), (viewer, True)):
            env = {k: v for k, v in os.environ.items() if k != "RTMPQ_TOKEN"}
            if token:
                env["RTMPQ_TOKEN"] = token
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rtmpq", "sub", url, "--insecure", "--frames", "10", "--wait", "20", env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out = (await asyncio.wait_for(proc.communicate(), 40))[0].decode()
            assert (proc.returncode == 0) is frames, out
            if frames:
                assert sum(json.loads(out.splitlines()[-1])["summary"]["objects"].values()) == 10, out
            else:
                assert "token is required" in out, out
            assert viewer not in out
        await end_live_publish(publish)
    finally:
        await node.close()
