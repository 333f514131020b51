"""Fuzz targets, the atheris runner and the corpus capture helper (see docs/reliability.md)."""
