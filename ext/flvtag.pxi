# compiled twin of rtmpq/codec/flvtag.py (to be written)
