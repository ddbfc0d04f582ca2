"""The steps of a run, one module each. Each is a thin Prefect task over plain code in core/."""
