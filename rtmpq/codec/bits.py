"""Placeholder: see the brief for rtmpq/codec/bits.py."""

__all__: list[str] = []
