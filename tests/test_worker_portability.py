"""The worker runs on the Python of the images users have: 3.8 and newer (DCP's CellProfiler 4.2.8
image has 3.8). vermin reads the worker's source for what each construct needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).resolve().parents[1] / "worker"


def vermin(*paths: Path) -> subprocess.CompletedProcess[str]:
    # The console script installed beside this Python (the package has no __main__).
    command = [str(Path(sys.executable).parent / "vermin"), "--target=3.8-", "--no-tips", "--violations", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_the_worker_needs_nothing_newer_than_python_3_8() -> None:
    result = vermin(WORKER)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_finds_a_construct_newer_than_python_3_8(tmp_path: Path) -> None:
    newer = tmp_path / "newer.py"
    newer.write_text('print("job-1".removeprefix("job-"))\n')  # str.removeprefix: Python 3.9
    result = vermin(newer)
    assert result.returncode != 0 and "removeprefix" in result.stdout
