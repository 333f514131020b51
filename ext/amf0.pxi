# compiled twin of rtmpq/codec/amf0.py (to be written)
