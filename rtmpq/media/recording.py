"""Record a publish session as an FLV file: a remux of exactly the tags received.

The file is ``<dir>/<app>/<key>-<UTC start>.flv``. The key has passed the session's allowlist
(letters, digits, ``_.~-``), so it cannot climb out of ``dir``; we check that once more anyway.
"""

import logging
import time
from pathlib import Path

from ..redact import safe_name
from .flv import FlvWriter

log = logging.getLogger("rtmpq.media")

# "@setDataFrame" as an AMF0 string: publishers wrap onMetaData in it; FLV files store it without.
_SET_DATA_FRAME = b"\x02\x00\x0d@setDataFrame"


def recording_path(directory: Path, broadcast: str, started: float) -> Path:
    app, _, key = broadcast.rpartition("/")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    folder = (directory / app).resolve()
    if not folder.is_relative_to(directory.resolve()):
        raise ValueError("recording path escapes the recording directory")
    path = folder / f"{key}-{stamp}.flv"
    n = 1
    while path.exists():
        n += 1
        path = folder / f"{key}-{stamp}-{n}.flv"
    return path


class FlvRecorder:
    def __init__(self, directory: str | Path, broadcast: str, *, started: float | None = None) -> None:
        self.path = recording_path(Path(directory), broadcast, time.time() if started is None else started)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "wb", buffering=256 * 1024)
        self._writer = FlvWriter(self._file, has_audio=True, has_video=True)
        self.tags = 0
        log.info("recording %s to %s", safe_name(broadcast), self.path.parent / f"…{self.path.suffix}")

    def write(self, type_id: int, timestamp: int, body) -> None:
        if type_id == 18 and bytes(body[: len(_SET_DATA_FRAME)]) == _SET_DATA_FRAME:
            body = body[len(_SET_DATA_FRAME) :]
        self._writer.write_tag(type_id, timestamp, body)
        self.tags += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
