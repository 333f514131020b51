# compiled twin of rtmpq/codec/nal.py (to be written)
