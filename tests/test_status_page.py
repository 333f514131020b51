"""The status page at / in headless Chromium: it lists a broadcast that goes live while it is open,
and its link opens a player that plays."""

from .conftest import chromium_devtools, need, need_hls_js, start_up_node
from .publishers import LivePublish, ffmpeg_publish_args


async def test_status_page_lists_a_live_broadcast_and_links_to_a_playing_player(tmp_path):
    need("ffmpeg")
    need_hls_js()
    node = await start_up_node(tmp_path, grace_period=30.0)  # the broadcast waits for its publisher after it
    host, http_port = node.edge.address
    publisher = None
    try:
        async with chromium_devtools(tmp_path, f"http://{host}:{http_port}/") as devtools:
            # the page is open before anything is live: it says so
            assert await devtools.poll("document.getElementById('broadcasts').textContent.includes('no live broadcasts')")
            # (30 s at most: it leaves once the player plays)
            publisher = LivePublish(
                ffmpeg_publish_args(f"rtmp://127.0.0.1:{node.rtmp.address[1]}/live/web", str(tmp_path / "ref.flv"),
                                    seconds=30))
            # ...and lists the broadcast once it is live, without a reload, with its tracks
            row = await devtools.poll("""(() => { const r = document.querySelector('tr[data-name="live/web"]');
                return r && r.textContent.includes('avc1.') && r.textContent.includes('mp4a.40.2') ? r.textContent : null; })()""")
            assert row and "320x240" in row, await devtools.evaluate("document.body.innerText")
            href = await devtools.evaluate("document.querySelector('tr[data-name=\"live/web\"] a.player').href")
            assert href == f"http://{host}:{http_port}/live/web/"
            await devtools.evaluate("document.querySelector('tr[data-name=\"live/web\"] a.player').click()")
            playing = await devtools.poll("location.pathname === '/live/web/' && document.getElementById('video') "
                                           "&& document.getElementById('video').currentTime > 1")
            assert playing, (await devtools.evaluate("location.href"),
                             await devtools.errors())
            await publisher.finish()
            # the publisher left: the broadcast waits for it, and the page says so (it looked live)
            await devtools.evaluate("location.href = '/'")
            gone = await devtools.poll("""(() => { const r = document.querySelector('tr[data-name="live/web"]');
                return r && r.textContent.includes('publisher gone') ? r.textContent : null; })()""")
            assert gone, await devtools.evaluate("document.body.innerText")
    finally:
        if publisher is not None and not publisher.task.done():
            publisher.task.cancel()
        await node.close()
