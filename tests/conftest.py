import shutil

import pytest

from rtmpq import codec


def pytest_report_header(config):
    return f"rtmpq codec backend: {codec.BACKEND}"


def need(binary: str) -> str:
    """Path of a system binary the test needs; a missing one is a setup error, not a skip."""
    path = shutil.which(binary)
    if path is None:
        pytest.fail(f"{binary} is not installed: run `make install-test` (installs the system packages)")
    return path
