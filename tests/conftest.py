import shutil
import socket

import pytest

from rtmpq import codec
from rtmpq.config import IngestConfig
from rtmpq.nodes.up import HttpConfig, MoqConfig, UpNode


def pytest_report_header(config):
    return f"rtmpq codec backend: {codec.BACKEND}"


def need(binary: str) -> str:
    """Path of a system binary the test needs; a missing one is a setup error, not a skip."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run `make install-test` (installs the system packages)")
    return path


def free_port(kind=socket.SOCK_STREAM) -> int:
    """A free loopback port (TCP by default; socket.SOCK_DGRAM for UDP)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_up_node(tmp_path, backend: str = "aioquic") -> UpNode:
    """`rtmpq up` in this process, every listener on a free loopback port."""
    n = UpNode(IngestConfig(rtmp_host="127.0.0.1", rtmp_port=0),
               MoqConfig(host="127.0.0.1", port=0, state_dir=tmp_path / "state", backend=backend),
               HttpConfig(host="127.0.0.1", port=0))
    await n.start()
    return n


@pytest.fixture(params=["aioquic", "aiopquic"])
async def node(tmp_path, request):
    """`rtmpq up` on each QUIC backend in turn (a module may define its own ``node``)."""
    n = await start_up_node(tmp_path, request.param)
    yield n
    await n.close()
