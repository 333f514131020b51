"""Placeholder: see the brief for rtmpq/codec/amf0.py."""

__all__: list[str] = []
