"""The one thin layer between this package and boto3: one module per AWS service."""
