# cython: language_level=3
"""rtmpq._speedups: the compiled twins of rtmpq/codec/*.py.

One extension, one .pxi per codec module. Every name defined here has a pure-Python twin with the
same name, the same results and the same exceptions; rtmpq.codec picks one at import time.
"""
from rtmpq.errors import RemoteProtocolError, LocalProtocolError
from rtmpq.codec.sentinel import NEED_DATA

include "chunk.pxi"
include "amf0.pxi"
include "bits.pxi"
include "nal.pxi"
include "flvtag.pxi"
include "obu.pxi"
