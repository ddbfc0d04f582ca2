"""Distributed-Something's and Distributed-CellProfiler's own public files: the job files, fleet file
and config.py files their users bring unchanged.

They sit in `../shared/reference/ds-files`, beside the repository (in CI too). The tests that read
them are marked `needs_ds_files`: its fixture (offered by conftest.py) fails, rather than skips, when
the folder is absent, so the tests over users' real files never pass by being left out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

DS_FILES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "ds-files"

needs_ds_files = pytest.mark.usefixtures("ds_files_present")


@pytest.fixture
def ds_files_present() -> Path:
    if not DS_FILES.is_dir():
        pytest.fail(f"{DS_FILES} is absent: these tests run on Distributed-Something's own files, kept there")
    return DS_FILES
