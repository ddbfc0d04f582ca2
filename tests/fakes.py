"""Test doubles for what no emulator provides."""

from __future__ import annotations


class FakeClock:
    """Time that moves only when the code under test sleeps: retry and polling loops run instantly."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
