"""Fetch hls.js (the player page's HLS library) from the npm registry into the package.

    python scripts/hlsjs.py [TARGET]     default rtmpq/edge/static/hls.min.js

Used by `make hlsjs` and by setup.py when it builds a wheel from a tree that has none, so an
installed rtmpq serves its player page from any directory. The tarball is pinned by version and
by the SHA-512 the npm registry publishes for it (its "integrity"), and kept in RTMPQ_HLSJS_CACHE
(default var/npm) so a rebuild needs no network. Standard library only (it runs inside a build).
"""

import base64
import hashlib
import io
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

HLSJS_VERSION = "1.7.4"
HLSJS_INTEGRITY = "sha512-3GlxGdPvT2YHvQYOt+yOzT/DEior/qJVNIylHA77kgeoBTdQQqi70GwefNEUmHQeNGyjC8U62+bruqW/Tpm+tg=="
HLSJS_URL = f"https://registry.npmjs.org/hls.js/-/hls.js-{HLSJS_VERSION}.tgz"
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TARGET = ROOT / "rtmpq" / "edge" / "static" / "hls.min.js"


def _check(data: bytes) -> bytes:
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != HLSJS_INTEGRITY:
        raise ValueError(f"hls.js {HLSJS_VERSION} tarball does not match its npm integrity {HLSJS_INTEGRITY}")
    return data


def tarball() -> bytes:
    cache = Path(os.environ.get("RTMPQ_HLSJS_CACHE") or ROOT / "var" / "npm") / f"hls.js-{HLSJS_VERSION}.tgz"
    if cache.exists():
        return _check(cache.read_bytes())
    with urllib.request.urlopen(HLSJS_URL, timeout=60) as r:
        data = _check(r.read())
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_bytes(data)
    except OSError:
        pass  # a read-only tree: fine, just not cached
    return data


def fetch(target: Path = DEFAULT_TARGET) -> Path:
    with tarfile.open(fileobj=io.BytesIO(tarball()), mode="r:gz") as tar:
        member = tar.extractfile("package/dist/hls.min.js")
        if member is None:
            raise ValueError("hls.js tarball has no package/dist/hls.min.js")
        js = member.read()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(js)
    tmp.replace(target)
    return target


if __name__ == "__main__":
    print(fetch(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_TARGET))
