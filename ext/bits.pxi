# compiled twin of rtmpq/codec/bits.py (to be written)
