"""The flows users run."""
