"""A set of job ids that stays small at a million: the job-file check, the summary and the monitor
each hold every id of a batch at once.

A job id is 16 hex digits (a sha256 prefix), so it fits one unsigned 64-bit integer exactly. A set
of a million id strings costs over 100 MB and a set of ints about 60 MB; this open-addressing table
(an `array('Q')`, at most half full) costs 16 to 32 bytes per id. Ids are evenly spread, so probing
from their low bits is enough. Slot value 0 means empty, so the id 0 is remembered apart, and an id
that is not 16 hex digits (never one of ours, but records can be written by hand) in a plain set.
"""

from __future__ import annotations

from array import array

_HEX_DIGITS = frozenset("0123456789abcdef")
_INITIAL_SLOTS = 1 << 12


class JobIdSet:
    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * _INITIAL_SLOTS))
        self._count = 0
        self._zero_seen = False
        self._others: set[str] = set()

    def add(self, job_id: str) -> bool:
        """Remember the id; False when it was already there."""
        value = _as_int(job_id)
        if value is None:
            if job_id in self._others:
                return False
            self._others.add(job_id)
            return True
        return self.add_int(value)

    def add_int(self, value: int) -> bool:
        """Remember a 64-bit unsigned value itself (a hash); False when it was already there."""
        if value == 0:
            seen, self._zero_seen = self._zero_seen, True
            return not seen
        if 2 * (self._count + 1) > len(self._slots):
            self._grow()
        if not _insert(self._slots, value):
            return False
        self._count += 1
        return True

    def __contains__(self, job_id: object) -> bool:
        if not isinstance(job_id, str):
            return False
        value = _as_int(job_id)
        if value is None:
            return job_id in self._others
        return self.has_int(value)

    def has_int(self, value: int) -> bool:
        """Is this 64-bit unsigned value (see `add_int`) remembered?"""
        if value == 0:
            return self._zero_seen
        mask = len(self._slots) - 1
        slot = value & mask
        while (current := self._slots[slot]) != 0:
            if current == value:
                return True
            slot = (slot + 1) & mask
        return False

    def __len__(self) -> int:
        return self._count + self._zero_seen + len(self._others)

    def _grow(self) -> None:
        slots = array("Q", bytes(16 * len(self._slots)))
        for value in self._slots:
            if value:
                _insert(slots, value)
        self._slots = slots


def _as_int(job_id: str) -> int | None:
    if len(job_id) == 16 and _HEX_DIGITS.issuperset(job_id):
        return int(job_id, 16)
    return None


def _insert(slots: array[int], value: int) -> bool:
    mask = len(slots) - 1
    slot = value & mask
    while (current := slots[slot]) != 0:
        if current == value:
            return False
        slot = (slot + 1) & mask
    slots[slot] = value
    return True
