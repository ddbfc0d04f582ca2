"""The configuration of a batch: one pydantic model, loaded from YAML, a dict or a saved block.

Setting names keep Distributed-Something's meanings (its config.py name is given in each
description) in snake_case, with units in the names.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prefect_distributed.core.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
# An SQS queue ARN: Distributed-CellProfiler configs before 2023 name the dead-letter queue so.
QUEUE_ARN = re.compile(r"^arn:aws[\w-]*:sqs:[a-z0-9-]+:\d{12}:(?P<name>.+)$")
# Longest queue name we derive is "<app>-<8 hex>-dead"; SQS allows 80 characters.
MAX_APP_NAME = 60
# Deliveries the redrive policy allows beyond job_retries: hand-backs and workers that died mid-job.
REDRIVE_SPARE_RECEIVES = 20
# SQS's highest maxReceiveCount.
MAX_RECEIVE_COUNT = 1000


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class QueueSettings(_Section):
    """The job queue and its dead-letter queue."""

    name: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        max_length=80,
        description="Job queue name (SQS_QUEUE_NAME). Default: '<app_name>-<run id>', new for every run.",
    )
    dead_letter_queue_name: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        max_length=80,
        description="Dead-letter queue name (SQS_DEAD_LETTER_QUEUE). Default: '<queue name>-dead'.",
    )
    visibility_timeout_s: int = Field(
        default=60,
        ge=1,
        le=43200,
        description="Seconds a received job stays hidden from other workers (SQS_MESSAGE_VISIBILITY). "
        "Workers extend it while a job runs, so it need not cover the longest job.",
    )
    job_retries: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="Failed runs of a job's program before the worker moves the job to the dead-letter queue "
        "(JOB_RETRIES), counted from the job's attempt records: a job handed back (SIGTERM, a Spot notice) or "
        "whose worker died never spends one. The queue's redrive policy stays as a safety net for a job that "
        f"kills its worker every time: it moves a job after job_retries + {REDRIVE_SPARE_RECEIVES} deliveries "
        "(at most 1000, SQS's limit).",
    )
    retry_delay_s: int = Field(
        default=60,
        ge=0,
        le=43200,
        description="Seconds before a failed job is offered again (Distributed-Something: 60).",
    )
    job_timeout_s: int = Field(
        default=0, ge=0, description="Kill a job's program after this many seconds; 0 means never."
    )

    @field_validator("name", "dead_letter_queue_name", mode="before")
    @classmethod
    def _name_from_arn(cls, value: Any) -> Any:
        """A queue given by its ARN (arn:aws:sqs:<region>:<account>:<name>) is reduced to its name, as
        Distributed-CellProfiler's run.py does for an old-style SQS_DEAD_LETTER_QUEUE."""
        found = QUEUE_ARN.match(value) if isinstance(value, str) else None
        return found.group("name") if found else value

    @property
    def redrive_receive_count(self) -> int:
        """The redrive policy's maxReceiveCount: well above job_retries, so that only a job that kills
        its worker again and again reaches it, never one that was merely interrupted a few times."""
        return min(MAX_RECEIVE_COUNT, self.job_retries + REDRIVE_SPARE_RECEIVES)


class ContainerSettings(_Section):
    """What runs in each container (the task definition on AWS)."""

    image: str = Field(
        default="distributed-worker:latest",
        description="Worker image built from worker/Dockerfile on top of your program's image (DOCKERHUB_TAG).",
    )
    cpu_units: int = Field(default=1024, ge=128, description="ECS cpu units, 1024 = 1 vCPU (CPU_SHARES).")
    memory_mib: int = Field(default=2048, ge=128, description="Hard memory limit in MiB (MEMORY).")
    processes: int = Field(
        default=1, ge=1, le=256, description="Copies of the program run side by side in one container (DOCKER_CORES)."
    )
    stagger_s: int = Field(
        default=0, ge=0, le=3600, description="Seconds between starting those copies (SECONDS_TO_START)."
    )
    job_log_streams: bool = Field(
        default=False,
        description="Each job's output to its own CloudWatch log stream named by job id, in the log group "
        "'log_group_name'.",
    )
    resource_log_interval_s: int = Field(
        default=30,
        ge=0,
        le=3600,
        description="Seconds between the worker's resource lines (disk, memory, load; a WARNING when one runs "
        "short); 0: none.",
    )
    ephemeral_storage_gb: int = Field(
        default=20,
        ge=20,
        le=200,
        description="fargate: each ECS task's disk in GiB, 20 (Fargate's default, included in the price) to 200.",
    )
    pass_aws_credentials: bool = Field(
        default=False,
        description="Give the program the AWS keys the worker has (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_SESSION_TOKEN). Off by default: a program that prints its environment would show them. On AWS a "
        "program that needs AWS uses the task role (fleet.task_role_arn), which it gets either way. The secret "
        "key and session token are masked in the program's output whatever this says.",
    )


class FleetSettings(_Section):
    """Where workers run: processes or containers on this machine, an EC2 Spot Fleet, Fargate, or an Auto
    Scaling group of Spot machines behind an ECS capacity provider."""

    backend: Literal["local", "docker", "spot-fleet", "fargate", "ec2-spot"] = Field(
        default="local",
        description="'local' (worker processes on this machine), 'docker' (containers of container.image on this "
        "machine's Docker engine: test an image before paying for a fleet), 'spot-fleet' (EC2 Spot Fleet, "
        "Distributed-Something's way), 'fargate' (ECS tasks on Fargate Spot: no machines to choose) or 'ec2-spot' "
        "(an Auto Scaling group of Spot machines that ECS grows and shrinks).",
    )
    local_workers: int = Field(
        default=4, ge=1, le=64, description="Worker processes ('local') or containers ('docker') on this machine."
    )
    local_workdir: Path | None = Field(
        default=None,
        description="Working directory of local workers; default: the folder of the config file.",
    )
    keep_local_logs: bool = Field(
        default=False,
        description="Keep the 'local' fleet's folder of worker logs (prefect-distributed/<run id> in the "
        "temporary directory) after cleanup, listed in the summary's resources_kept; by default cleanup "
        "removes it with the workers.",
    )
    machines: int = Field(default=1, ge=1, le=10000, description="Fleet target capacity (CLUSTER_MACHINES).")
    tasks_per_machine: int = Field(default=1, ge=1, le=256, description="Containers per machine (TASKS_PER_MACHINE).")
    machine_types: tuple[str, ...] = Field(
        default=("m5.xlarge",),
        min_length=1,
        description="EC2 instance types, one launch specification each (MACHINE_TYPE).",
    )
    max_price_usd_per_hour: float = Field(
        default=0.10, gt=0, description="Highest spot price per machine-hour in USD (MACHINE_PRICE)."
    )
    ebs_volume_gb: int = Field(default=30, ge=22, le=16384, description="Data volume per machine in GB (EBS_VOL_SIZE).")
    fleet_file: Path | None = Field(
        default=None, description="Spot Fleet request template (Distributed-Something's fleet file)."
    )
    ecs_cluster: str = Field(default="default", pattern=NAME_PATTERN, description="ECS cluster name (ECS_CLUSTER).")
    task_role_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[\w-]*:iam::\d{12}:role/.+$",
        description="IAM role of the worker containers (the ECS task role); never access keys.",
    )
    capacity_wait_s: int = Field(
        default=600,
        ge=0,
        le=3600,
        description="Longest wait for the machines when the fleet starts; then go on with what came. Also how "
        "long the monitor waits with no worker running while jobs wait before it stops the run as a lost fleet.",
    )
    expected_job_minutes: float | None = Field(
        default=None,
        gt=0,
        description="How long one job takes, for the cost estimate shown before the fleet starts; "
        "without it the estimate is a price per hour.",
    )
    budget_usd: float | None = Field(
        default=None,
        gt=0,
        description="Stop the run (workers, machines, everything) once its machines have cost this much in USD; "
        "the jobs not done by then are listed as unfinished.",
    )
    cheapest_after_s: int | None = Field(
        default=None,
        ge=0,
        description="'Cheapest' mode (Distributed-Something's monitor 'cheapest'): this many seconds after the "
        "fleet starts, stop replacing machines: the run goes on with the machines it has (at least one).",
    )
    # fargate and ec2-spot: the run's ECS service on capacity providers (core/fleets/fargate.py, ec2_spot.py).
    ecs_tasks: int = Field(
        default=4,
        ge=1,
        le=5000,
        description="fargate: worker containers (ECS tasks) running at once. (ec2-spot runs machines × "
        "tasks_per_machine, fleet.machines being the most machines ECS may start.)",
    )
    subnets: tuple[str, ...] = Field(
        default=(),
        description="fargate, ec2-spot: subnets the ECS tasks (fargate) or machines (ec2-spot) start in; subnets "
        "in several zones give Spot more capacity to draw on.",
    )
    security_groups: tuple[str, ...] = Field(
        default=(), description="fargate, ec2-spot: security groups of the ECS tasks (fargate) or machines (ec2-spot)."
    )
    assign_public_ip: bool = Field(
        default=True,
        description="fargate: give each ECS task a public IP, to reach ECR, SQS and S3 through the subnet's "
        "internet gateway; false in a private subnet with a NAT gateway or VPC endpoints.",
    )
    fargate_spot_weight: int = Field(
        default=4, ge=0, le=1000, description="fargate: share of the ECS tasks placed on FARGATE_SPOT."
    )
    fargate_weight: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="fargate: share placed on FARGATE (on-demand, 2 to 3 times Spot's price): with the defaults one "
        "task in five, so a run goes on when Spot has no capacity (ECS never moves a task from Spot to on-demand "
        "by itself); 0: Spot only.",
    )
    execution_role_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[\w-]*:iam::\d{12}:role/.+$",
        description="fargate: the ECS task execution role (pulls the image, writes the logs); the bootstrap makes "
        "one and prints its ARN.",
    )
    instance_profile_arn: str | None = Field(
        default=None,
        pattern=r"^arn:aws[\w-]*:iam::\d{12}:instance-profile/.+$",
        description="ec2-spot: the machines' instance profile (joins them to ECS); the bootstrap makes one.",
    )


class CheckIfDoneSettings(_Section):
    """Skip a job whose output prefix already holds its results (CHECK_IF_DONE_BOOL)."""

    enabled: bool = Field(default=False, description="Turn check-if-done on (CHECK_IF_DONE_BOOL).")
    expected_number_files: int = Field(
        default=1, ge=1, description="Objects that must exist under the job's output prefix (EXPECTED_NUMBER_FILES)."
    )
    min_file_size_bytes: int = Field(
        default=1, ge=0, description="Only objects at least this large count (MIN_FILE_SIZE_BYTES)."
    )
    necessary_string: str = Field(
        default="", description="Only keys containing this string count; empty: every key (NECESSARY_STRING)."
    )


class JobSettings(_Section):
    """Defaults for what a job file leaves out (Distributed-Something's job files often give no 'output')."""

    output: str | None = Field(
        default=None,
        description="Where each job's outputs go when the job file gives no 'output': a template with {field} "
        "placeholders (e.g. 'results/{plate}/{well}'), or a folder in which each job gets a sub-folder of its "
        "own (README: 'Coming from Distributed-Something'). Default: the app_name, as such a folder.",
    )
    inputs: tuple[str, ...] = Field(
        default=(),
        description="S3 keys every job downloads besides its own 'inputs', with {field} placeholders "
        "(e.g. '{pipeline}'); a key ending in '/' downloads everything under that prefix.",
    )


class DownloadSettings(_Section):
    """Distributed-CellProfiler's DOWNLOAD_FILES: fetch the images a job's LoadData CSV lists."""

    enabled: bool = Field(
        default=False,
        description="Before the program runs, download the job's CSV (the field 'list_field') and every file its "
        "rows for the job's Metadata list, and point the CSV at the local copies (DOWNLOAD_FILES).",
    )
    list_field: str = Field(
        default="data_file",
        min_length=1,
        description="The job field holding the CSV's key in the input bucket (DCP's 'data_file'); a '.txt' "
        "file of one path per line is read as a file list.",
    )
    bucket_root: str = Field(
        default="/home/ubuntu/bucket",
        pattern=r"^/.*[^/]$",
        description="Where the CSV's paths point: the input bucket's mount point in DCP's containers "
        "(its DATA_ROOT); '<bucket_root>/<key>' is the file '<key>' of the input bucket.",
    )
    threads: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Files one job downloads at once: these, and everything under an input prefix ending in '/'.",
    )


class MonitorSettings(_Section):
    """How the flow watches a run."""

    poll_interval_s: float = Field(
        default=10.0, gt=0, le=600, description="Seconds between two readings of the queues."
    )
    settle_polls: int = Field(
        default=3, ge=1, le=100, description="Consecutive empty readings needed before the batch counts as done."
    )
    max_run_time_s: int = Field(
        default=7 * 24 * 3600, ge=10, description="Give up (and clean up) after this many seconds of monitoring."
    )
    worker_idle_exit_s: int = Field(
        default=60, ge=1, description="Workers exit after the queue has been empty this long."
    )
    worker_wait_time_s: int = Field(default=20, ge=0, le=20, description="Workers' long-poll wait in seconds.")


class RunConfig(_Section):
    """Everything one batch needs. Loaded by `load_config`; see deployments/demo/config.yaml."""

    app_name: str = Field(
        pattern=NAME_PATTERN,
        max_length=MAX_APP_NAME,
        description="Name of the batch; prefixes every resource (APP_NAME).",
    )
    job_file: Path = Field(description="The job file: shared keys plus one job per element of 'groups'.")
    command: str = Field(
        min_length=1,
        description="The program each job runs: a template filled with the job's fields and {input_dir}, "
        "{output_dir}, {job_id}.",
    )
    bucket: str = Field(min_length=3, max_length=63, description="S3 bucket for run records (AWS_BUCKET).")
    input_bucket: str | None = Field(default=None, min_length=3, max_length=63, description="Inputs; default: bucket.")
    output_bucket: str | None = Field(
        default=None, min_length=3, max_length=63, description="Outputs; default: bucket."
    )
    region: str = Field(default="us-east-1", pattern=r"^[a-z]{2}(-[a-z]+)+-\d$", description="AWS region (AWS_REGION).")
    aws_credentials: str | None = Field(
        default=None,
        description="Name of a saved prefect-aws 'AWS Credentials' block; default: boto3's credential chain.",
    )
    endpoint_url: str | None = Field(
        default=None, description="Send every AWS call here (a local emulator); default: AWS itself."
    )
    log_group_name: str | None = Field(
        default=None, description="CloudWatch log group (LOG_GROUP_NAME); default: app_name."
    )
    preflight: bool = Field(
        default=True,
        description="Check the account and this config (roles, network, quotas, buckets, queue names) before "
        "anything is created, and stop with every problem found; false skips it (setup still checks the basics).",
    )
    dead_letter_queue_after_run: Literal["delete", "keep", "keep-if-jobs"] = Field(
        default="keep-if-jobs",
        description="What cleanup does with the dead-letter queue: 'keep-if-jobs' keeps it while it holds dead "
        "jobs (they expire after 14 days; the janitor deletes it once empty), 'keep' always, 'delete' always. "
        "Dead jobs are listed in the run summary either way.",
    )
    fail_on_dead_jobs: bool = Field(
        default=False,
        description="End the flow run Failed when any job ended in the dead-letter queue (a parent flow or "
        "automation then sees a failure). By default such a run ends 'Completed with dead jobs', its message "
        "giving the counts, and returns its RunSummary.",
    )
    keep_log_group: bool = Field(
        default=False,
        description="Keep the run's CloudWatch log group after its export to S3 (runs/<run id>/logs/); "
        "by default it is deleted once the export completed.",
    )
    log_export_wait_s: int = Field(
        default=300,
        ge=0,
        le=3600,
        description="Longest wait at cleanup for the log export to S3; a log group whose export did not complete "
        "is kept (60 days' retention) and said so.",
    )
    queue: QueueSettings = Field(default_factory=QueueSettings)
    container: ContainerSettings = Field(default_factory=ContainerSettings)
    fleet: FleetSettings = Field(default_factory=FleetSettings)
    check_if_done: CheckIfDoneSettings = Field(default_factory=CheckIfDoneSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    download_files: DownloadSettings = Field(default_factory=DownloadSettings)
    monitor: MonitorSettings = Field(default_factory=MonitorSettings)

    @field_validator("bucket", "input_bucket", "output_bucket")
    @classmethod
    def _bucket_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[a-z0-9][a-z0-9.-]+[a-z0-9]", value):
            raise ValueError("an S3 bucket name has lowercase letters, digits, '.' and '-' only")
        return value

    @model_validator(mode="after")
    def _fleet_file_for_spot_fleet(self) -> RunConfig:
        if self.fleet.backend == "spot-fleet" and self.fleet.fleet_file is None:
            raise ValueError(
                "fleet.fleet_file is required with fleet.backend 'spot-fleet'; "
                "start from deployments/aws/fleet.example.json"
            )
        return self

    @property
    def inputs_bucket(self) -> str:
        return self.input_bucket or self.bucket

    @property
    def outputs_bucket(self) -> str:
        return self.output_bucket or self.bucket

    @property
    def job_settings(self) -> JobSettings:
        """The job-file defaults with the output folder resolved (the app_name when none is set)."""
        return self.jobs.model_copy(update={"output": self.jobs.output or self.app_name})

    def queue_names(self, run_id: str) -> tuple[str, str]:
        """The job queue's and the dead-letter queue's names for this run."""
        queue = self.queue.name or f"{self.app_name}-{run_id.replace('-', '')[:8]}"
        return queue, self.queue.dead_letter_queue_name or f"{queue}-dead"


# Distributed-Something's (and Distributed-CellProfiler's) config.py names, and the setting each is here.
# The unknown-setting message and the config.py converter (core/ds_config.py) both read this.
DS_NAMES: dict[str, str] = {
    "APP_NAME": "app_name",
    "DOCKERHUB_TAG": "container.image",
    "AWS_REGION": "region",
    "AWS_BUCKET": "bucket",
    "SOURCE_BUCKET": "input_bucket",
    "DESTINATION_BUCKET": "output_bucket",
    "ECS_CLUSTER": "fleet.ecs_cluster",
    "CLUSTER_MACHINES": "fleet.machines",
    "TASKS_PER_MACHINE": "fleet.tasks_per_machine",
    "MACHINE_TYPE": "fleet.machine_types",
    "MACHINE_PRICE": "fleet.max_price_usd_per_hour",
    "EBS_VOL_SIZE": "fleet.ebs_volume_gb",
    "DOCKER_CORES": "container.processes",
    "CPU_SHARES": "container.cpu_units",
    "MEMORY": "container.memory_mib",
    "SECONDS_TO_START": "container.stagger_s",
    "SQS_QUEUE_NAME": "queue.name",
    "SQS_MESSAGE_VISIBILITY": "queue.visibility_timeout_s",
    "SQS_DEAD_LETTER_QUEUE": "queue.dead_letter_queue_name",
    "JOB_RETRIES": "queue.job_retries",
    "LOG_GROUP_NAME": "log_group_name",
    "CHECK_IF_DONE_BOOL": "check_if_done.enabled",
    "DOWNLOAD_FILES": "download_files.enabled",
    "EXPECTED_NUMBER_FILES": "check_if_done.expected_number_files",
    "MIN_FILE_SIZE_BYTES": "check_if_done.min_file_size_bytes",
    "NECESSARY_STRING": "check_if_done.necessary_string",
}


def _unknown_setting_hint(key: str, parent_fields: list[str]) -> str:
    ours = DS_NAMES.get(key.upper())
    if ours:
        return f"; {key} is Distributed-Something's name; here it is {ours}"
    close = difflib.get_close_matches(key, parent_fields, n=1)
    return f"; did you mean '{close[0]}'?" if close else f"; known settings here: {', '.join(parent_fields)}"


def _describe(errors: list[dict[str, Any]], source: str) -> str:
    lines = [f"Invalid configuration in {source}:"]
    for error in errors:
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            hint = _unknown_setting_hint(str(error["loc"][-1]), _fields_at(error["loc"][:-1]))
            lines.append(f"  - {location}: unknown setting{hint}")
        elif error["type"] == "missing":
            lines.append(f"  - {location}: required setting is missing")
        elif not error["loc"]:
            lines.append(f"  - {error['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  - {location}: {error['msg'].removeprefix('Value error, ')} (got {error.get('input')!r})")
    return "\n".join(lines)


def _fields_at(path: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = RunConfig
    for part in path:
        annotation = model.model_fields[str(part)].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def parse_config(data: Any, source: str, base_dir: Path | None = None) -> RunConfig:
    """Validate a mapping into a RunConfig. Relative paths resolve against `base_dir`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of settings, got {type(data).__name__}")
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors(), source)) from None
    if base_dir is not None:
        fleet = config.fleet.model_copy(
            update={
                "local_workdir": base_dir / (config.fleet.local_workdir or "."),
                "fleet_file": base_dir / config.fleet.fleet_file if config.fleet.fleet_file else None,
            }
        )
        config = config.model_copy(update={"job_file": base_dir / config.job_file, "fleet": fleet})
    if config.job_file.is_dir():
        raise ConfigError(
            f"job_file {config.job_file} is a folder, not a job file: set job_file to the JSON or YAML file "
            "inside it (e.g. job_file: jobs/exampleJob.json)"
        )
    return config


def load_config_file(path: Path) -> RunConfig:
    """Read a YAML (or JSON) config file; relative paths in it are relative to its folder."""
    if not path.is_file():
        where = (
            ""
            if path.is_absolute()
            else f" in {Path.cwd()} (a relative path is read from the working directory; a deployment's run "
            "works in the folder `prefect deploy` ran in)"
        )
        raise ConfigError(f"config file {path} does not exist{where}; give a path to a YAML file or a saved block name")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    return parse_config(data, source=str(path), base_dir=path.resolve().parent)
