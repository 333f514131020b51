"""Byte-level codecs, each with a compiled twin in rtmpq._speedups.

Import codec functions from here, never from the submodules: this module picks the compiled
implementation when it is built and RTMPQ_PUREPYTHON is not "1", and the pure-Python reference
otherwise. RTMPQ_REQUIRE_COMPILED=1 turns a missing extension into an ImportError (CI uses it so
the "compiled" run cannot quietly test the reference twice).
"""

import logging
import os

from . import amf0, bits, chunk, flvtag, nal, obu
from .amf0 import amf0_encode
from .sentinel import NEED_DATA

log = logging.getLogger("rtmpq.codec")

# name -> pure-Python twin; rtmpq._speedups must define every one of these names.
REFERENCE = {
    name: getattr(module, name)
    for module in (chunk, amf0, bits, nal, flvtag, obu)
    for name in module.__all__
}

_compiled = None
if os.environ.get("RTMPQ_PUREPYTHON") != "1":
    try:
        from rtmpq import _speedups as _compiled
    except ImportError as exc:  # not built: the reference still works, only slower
        if os.environ.get("RTMPQ_REQUIRE_COMPILED") == "1":
            raise
        log.warning("rtmpq._speedups is not built (%s); using the pure-Python codecs", exc)

BACKEND = "compiled" if _compiled is not None else "python"
COMPILED = _compiled  # the extension module or None, for tests that compare both twins

_missing = [n for n in REFERENCE if _compiled is not None and not hasattr(_compiled, n)]
if _missing and os.environ.get("RTMPQ_REQUIRE_COMPILED") == "1":
    raise ImportError(f"rtmpq._speedups lacks {_missing}")

for _name, _pure in REFERENCE.items():
    globals()[_name] = getattr(_compiled, _name, _pure) if _compiled is not None else _pure

__all__ = ["BACKEND", "COMPILED", "NEED_DATA", "REFERENCE", "amf0_encode", *REFERENCE]
