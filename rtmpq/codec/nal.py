"""Placeholder: see the brief for rtmpq/codec/nal.py."""

__all__: list[str] = []
