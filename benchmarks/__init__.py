"""Benchmarks of the control plane against Distributed-Something's method: see README.md here."""
