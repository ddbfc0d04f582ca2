"""`python -m prefect_distributed.worker`: run the worker until the queue has drained or it is told to stop."""

from .main import main

raise SystemExit(main())
