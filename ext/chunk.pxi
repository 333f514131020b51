# compiled twin of rtmpq/codec/chunk.py (to be written)
