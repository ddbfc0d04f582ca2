"""The worker that runs inside every container: polls the job queue, runs the program, records.

Standard library and boto3 only, so it can be copied into any image (see worker/README.md).
"""
