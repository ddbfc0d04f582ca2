"""The jobs of one run: a checked job file, or the part of it that an earlier run did not finish."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel, ConfigDict, Field

from prefect_distributed.core.jobs import Job, JobFileCheck, reread_jobs


class Batch(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    file: JobFileCheck
    only: frozenset[str] | None = Field(
        default=None, description="Run only these job ids (rerunning another run's failed jobs); None: every job."
    )

    @property
    def count(self) -> int:
        return self.file.count if self.only is None else len(self.only)

    def jobs(self, command: str) -> Iterator[Job]:
        """Stream the batch's jobs from the job file (which must not have changed since the check)."""
        for job in reread_jobs(self.file, command):
            if self.only is None or job.job_id in self.only:
                yield job
