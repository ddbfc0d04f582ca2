"""`prefect-distributed` (or `python -m prefect_distributed`): the deployments and the worker image
from the installed package, without a checkout of the repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect_distributed.deployments import DEPLOYMENTS, WORK_POOL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefect-distributed", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    deploy = commands.add_parser(
        "deploy", help=f"register the deployments ({', '.join(spec.name for spec in DEPLOYMENTS)}) on a work pool"
    )
    deploy.add_argument("--pool", default=WORK_POOL, help=f"the work pool (default: {WORK_POOL})")
    deploy.add_argument(
        "--working-dir",
        type=Path,
        help="where a process pool's runs start, so relative config paths resolve there (default: this folder)",
    )
    commands.add_parser("serve", help="serve the deployments from this process until Ctrl-C (no work pool needed)")
    commands.add_parser("worker-dir", help="print the worker's folder: `docker build` its Dockerfile there")
    args = parser.parse_args(argv)

    if args.command == "worker-dir":
        import prefect_distributed.worker

        print(Path(prefect_distributed.worker.__file__).parent)
        return 0
    from prefect_distributed import deployments

    if args.command == "serve":
        deployments.serve()
        return 0
    try:
        deployments.deploy(args.pool, args.working_dir)
    except ValueError as exc:
        print(f"prefect-distributed deploy: {exc}", file=sys.stderr)
        return 2
    print(f"Registered on work pool {args.pool!r}: {', '.join(spec.full_name for spec in DEPLOYMENTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
