"""`python -m worker`: run the worker until the queue has drained or it is told to stop."""

from worker.main import main

raise SystemExit(main())
