"""Where each job's outputs go, and Distributed-CellProfiler's `Metadata`, so no result is ever lost.

Every job writes under an S3 prefix of its own. Distributed-Something's job files often give one
`output` for every job and leave the rest to the program; with a program that writes fixed file
names (CellProfiler's `Image.csv`), jobs would overwrite each other's results, and check-if-done
would skip jobs that never ran. So:

- an `output` with `{placeholders}`, or one written in the group itself, is the job's prefix, filled
  in, unless the job has `Metadata`: DCP always adds its sub-folder, and so does this;
- otherwise (one `output` for every job, the config's `jobs.output`, or the app name) it is a
  folder, and each job gets a sub-folder of its own below it, named as Distributed-CellProfiler's
  worker (`cp-worker.py`) names it: `output_structure` with each Metadata name replaced by its
  value, else the Metadata values joined with `-`; a job without `Metadata` uses the values of its
  group's own keys joined with `-`, or its job id when its group has none or holds lists or maps.

`PrefixCheck` then refuses a batch in which one job's prefix equals or contains another's.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from prefect_distributed.core.errors import ConfigError
from prefect_distributed.core.idset import JobIdSet

METADATA_KEY = "Metadata"
OUTPUT_STRUCTURE_KEY = "output_structure"
_SCALARS = (str, int, float, bool)


def metadata_fields(value: Any, where: str) -> tuple[str, dict[str, str]]:
    """DCP's `Metadata`: the string `cellprofiler -g` takes, and its fields (`Metadata_Plate`: `P1`, ...).

    DCP writes it as `"Metadata_Plate=P1,Metadata_Well=A01"`; `cellprofiler --print-groups` writes a
    mapping. Either way the string given back is `k=v,...`, in the order given.
    """
    if isinstance(value, dict):
        pairs = [(str(key), _metadata_value(item, key, where)) for key, item in value.items()]
    elif isinstance(value, str):
        pairs = []
        for part in value.split(","):
            name, equals, item = part.partition("=")
            if not equals or not name.strip():
                raise ConfigError(
                    f"{where}: Metadata {value!r} must be 'Metadata_Name=value' pairs separated by commas "
                    f"(as in 'Metadata_Plate=P1,Metadata_Well=A01'); {part!r} is not one"
                )
            pairs.append((name.strip(), item.strip()))
    else:
        raise ConfigError(
            f"{where}: Metadata must be a string like 'Metadata_Plate=P1,Metadata_Well=A01' or a mapping, "
            f"got {type(value).__name__}"
        )
    if not pairs:
        raise ConfigError(f"{where}: Metadata is empty; give at least one 'Metadata_Name=value'")
    fields = dict(pairs)
    if len(fields) < len(pairs):
        raise ConfigError(f"{where}: Metadata {value!r} names a field twice")
    return ",".join(f"{name}={item}" for name, item in pairs), fields


def _metadata_value(item: Any, key: Any, where: str) -> str:
    if not isinstance(item, _SCALARS):
        raise ConfigError(f"{where}: Metadata field {key!r} must be a single value, got {type(item).__name__}")
    return str(item)


def structured_name(structure: Any, metadata: dict[str, str], where: str) -> str:
    """DCP's `output_structure`: each Metadata name in it replaced by its value, the rest kept.

    `Metadata_Plate-Metadata_Well` gives `P1-A01`. Longer names are replaced first, so a name that
    is part of another (`Metadata_Site` in `Metadata_SiteX`) cannot break it.
    """
    if not isinstance(structure, str) or not structure.strip("/"):
        raise ConfigError(f"{where}: output_structure must name Metadata fields, e.g. 'Metadata_Plate-Metadata_Well'")
    names = sorted(metadata, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(name) for name in names))
    if not pattern.search(structure):
        raise ConfigError(
            f"{where}: output_structure {structure!r} names none of this job's Metadata fields "
            f"({', '.join(metadata)}); it decides each job's output folder"
        )
    return pattern.sub(lambda match: metadata[match.group(0)], structure)


def own_folder(
    fields: dict[str, Any], group_keys: list[str], metadata: dict[str, str] | None, job_id: str, where: str
) -> str:
    """The sub-folder a job gets below a folder shared by every job (see the module docstring)."""
    if metadata is not None:
        if OUTPUT_STRUCTURE_KEY in fields:
            return structured_name(fields[OUTPUT_STRUCTURE_KEY], metadata, where)
        return "-".join(metadata.values())
    values = [fields[key] for key in group_keys]
    if values and all(isinstance(value, _SCALARS) for value in values):
        return "-".join(str(value) for value in values)
    return job_id


_UNSIGNED_64 = (1 << 64) - 1


def _prefix_hash(prefix: str) -> int:
    """64 bits of the prefix. Python's string hash is the fastest there is, and though it differs
    from process to process, a check's passes all run in one process."""
    return hash(prefix) & _UNSIGNED_64


def _parents(prefix: str) -> Iterator[str]:
    """`a/b/c` -> `a`, `a/b`: what a check-if-done listing of each would also see."""
    end = prefix.find("/")
    while end > 0:
        yield prefix[:end]
        end = prefix.find("/", end + 1)


def overlap(first: str, second: str) -> bool:
    """Do two prefixes share outputs: the same, or one a folder of the other?"""
    return first == second or second.startswith(f"{first}/") or first.startswith(f"{second}/")


class PrefixCheck:
    """Remembers the output prefixes seen so far, in 16 to 32 bytes each, and spots one that overlaps.

    Holding a million prefix strings would cost hundreds of MB; this holds 64-bit hashes (in
    JobIdSets) of each prefix and, to find one prefix inside another, of its parent folders at the
    depths (counted in '/'-separated parts) that some prefix has: in most files every prefix has the
    same depth, and then no parent is held at all. A prefix at a new depth shallower than one seen
    before may contain earlier prefixes whose parents at that depth were never held: `add` reports
    it, and the caller's second pass hands every earlier prefix to `remember_parents`.

    A hash hit is only a suspect: the caller confirms it by reading the file again (`overlap`), as
    the duplicate-id check does.
    """

    def __init__(self) -> None:
        self._prefixes = JobIdSet()
        self._parents = JobIdSet()
        self._depths: set[int] = set()
        self._deepest = 0
        # The previous prefix's parents: jobs in a row mostly share them, and one already checked
        # and remembered for the previous job needs neither again (only that job's own prefix was
        # added since, and it is no parent of itself).
        self._last_parents: list[str] = []

    def add(self, prefix: str) -> bool:
        """Remember the prefix; False when it may overlap one seen before (a second pass tells)."""
        digest = _prefix_hash(prefix)
        clash = not self._prefixes.add_int(digest) or self._parents.has_int(digest)
        depth = prefix.count("/") + 1
        if depth not in self._depths:
            self._depths.add(depth)
            clash = clash or depth < self._deepest
        self._deepest = max(self._deepest, depth)
        parents = list(_parents(prefix))
        for index, parent in enumerate(parents):
            if index + 1 not in self._depths:
                continue
            if index < len(self._last_parents) and self._last_parents[index] == parent:
                continue
            digest = _prefix_hash(parent)
            clash = self._prefixes.has_int(digest) or clash
            self._parents.add_int(digest)
        self._last_parents = parents
        return not clash

    def remember_parents(self, prefix: str) -> None:
        """Hold an earlier prefix's parents at every depth known now (after a new, shallower depth)."""
        for index, parent in enumerate(_parents(prefix)):
            if index + 1 in self._depths:
                self._parents.add_int(_prefix_hash(parent))
