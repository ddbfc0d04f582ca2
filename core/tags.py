"""The tags on everything a run creates: how cleanup, the janitor and cost reports find it."""

TAG_APP = "app"
TAG_RUN_ID = "run-id"
TAG_CREATED_BY = "created-by"
TAG_QUEUE_ROLE = "queue-role"  # "dead-letter" on a run's dead-letter queue, which cleanup may keep
DEAD_LETTER = "dead-letter"
CREATED_BY = "prefect-distributed"
