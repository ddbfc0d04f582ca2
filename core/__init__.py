"""Plain code behind the flow: models, the AWS layer, fleets. Nothing here imports Prefect."""
