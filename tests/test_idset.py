"""The compact job-id set the job-file check, the summary and the monitor share."""

from __future__ import annotations

import hashlib
import tracemalloc

from prefect_distributed.core.idset import JobIdSet


def job_id(n: int) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()[:16]


def test_ids_are_added_once_found_again_and_counted() -> None:
    ids = JobIdSet()
    added = [ids.add(job_id(n)) for n in range(10_000)]  # grows the table twice over
    again = [ids.add(job_id(n)) for n in range(0, 10_000, 7)]

    assert all(added) and not any(again)
    assert len(ids) == 10_000
    assert all(job_id(n) in ids for n in range(10_000))
    assert not any(job_id(n) in ids for n in range(10_000, 11_000))


def test_the_id_zero_and_ids_that_are_not_ours_are_kept_apart() -> None:
    ids = JobIdSet()
    for value in ("0" * 16, "job-001", "A" * 16, "abc"):
        assert ids.add(value) and not ids.add(value) and value in ids
    assert len(ids) == 4 and "job-002" not in ids and 7 not in ids


def test_ids_take_a_fraction_of_the_memory_of_a_set_of_id_strings_read_from_s3_keys() -> None:
    strings = [job_id(n) for n in range(200_000)]
    tracemalloc.start()
    try:
        compact = JobIdSet()
        for value in strings:
            compact.add(value)
        compact_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        plain = {value.encode().decode() for value in strings}  # new strings, as parsed from listed keys
        plain_bytes = tracemalloc.get_traced_memory()[0] - compact_bytes
    finally:
        tracemalloc.stop()
    assert len(plain) == len(compact) == 200_000
    assert compact_bytes < 35 * 200_000  # at most half-full 8-byte slots (the table doubles)
    assert compact_bytes * 3 < plain_bytes
