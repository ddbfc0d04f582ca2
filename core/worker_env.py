"""The environment a worker reads (worker/README.md), built from the run's config.

The same variables go into local worker processes and into the ECS task definition, so both
fleets run the worker the same way. Nothing secret is ever put here.
"""

from __future__ import annotations

from prefect_distributed.core.config import RunConfig
from prefect_distributed.core.models import QueueUrls, RunResources

# How long a worker gets from SIGTERM to exit (ECS stopTimeout, docker's stop timeout): an idle
# worker first finishes its long poll (at most SQS's 20 s) and hands back what it brought; a busy
# one gives its program 3 s (worker/program.py) and hands its job back. Past this: SIGKILL.
WORKER_STOP_TIMEOUT_S = 30


def worker_environment(config: RunConfig, resources: RunResources, urls: QueueUrls) -> dict[str, str]:
    check = config.check_if_done
    environment = {
        "DISTRIBUTED_QUEUE_URL": urls.queue_url,
        "DISTRIBUTED_DEAD_LETTER_QUEUE_URL": urls.dead_letter_queue_url,
        "DISTRIBUTED_RUN_ID": resources.run_id,
        "DISTRIBUTED_COMMAND": config.command,
        "DISTRIBUTED_INPUT_BUCKET": config.inputs_bucket,
        "DISTRIBUTED_OUTPUT_BUCKET": config.outputs_bucket,
        "DISTRIBUTED_RECORDS_BUCKET": resources.records_bucket,
        "DISTRIBUTED_CHECK_IF_DONE": "true" if check.enabled else "false",
        "DISTRIBUTED_EXPECTED_NUMBER_FILES": str(check.expected_number_files),
        "DISTRIBUTED_MIN_FILE_SIZE_BYTES": str(check.min_file_size_bytes),
        "DISTRIBUTED_NECESSARY_STRING": check.necessary_string,
        "DISTRIBUTED_VISIBILITY_TIMEOUT_S": str(config.queue.visibility_timeout_s),
        "DISTRIBUTED_RETRY_DELAY_S": str(config.queue.retry_delay_s),
        "DISTRIBUTED_JOB_RETRIES": str(config.queue.job_retries),
        "DISTRIBUTED_JOB_TIMEOUT_S": str(config.queue.job_timeout_s),
        "DISTRIBUTED_IDLE_EXIT_S": str(config.monitor.worker_idle_exit_s),
        "DISTRIBUTED_WAIT_TIME_S": str(config.monitor.worker_wait_time_s),
        "DISTRIBUTED_PROCESSES": str(config.container.processes),
        "DISTRIBUTED_STAGGER_S": str(config.container.stagger_s),
        "DISTRIBUTED_LOG_GROUP": resources.log_group if config.container.job_log_streams else "",
        "DISTRIBUTED_RESOURCE_LOG_S": str(config.container.resource_log_interval_s),
        "DISTRIBUTED_DOWNLOAD_FILES": "true" if config.download_files.enabled else "false",
        "DISTRIBUTED_DOWNLOAD_LIST_FIELD": config.download_files.list_field,
        "DISTRIBUTED_BUCKET_ROOT": config.download_files.bucket_root,
        "DISTRIBUTED_DOWNLOAD_THREADS": str(config.download_files.threads),
        "DISTRIBUTED_PASS_AWS_CREDENTIALS": "true" if config.container.pass_aws_credentials else "false",
        "AWS_REGION": config.region,
        "AWS_DEFAULT_REGION": config.region,
    }
    if config.endpoint_url:
        environment["AWS_ENDPOINT_URL"] = config.endpoint_url
    return environment
