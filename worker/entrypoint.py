"""The image's entry point: the worker, with its own packages and apart from the program's Python.

worker/install.sh runs it as `python3 -I .../worker/entrypoint.py`: -I keeps the image's PYTHONPATH
and other PYTHON* variables (which are the program's) away from the worker's Python, and puts
neither this folder nor the user's site-packages on its path. The worker's packages
(/opt/distributed/lib) come first, ahead of any boto3 of the image's own Python, and only here: the
program's Python never sees them.
"""

import os
import sys

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path[:0] = [root, os.path.join(root, "lib")]
    from worker.main import main

    sys.exit(main())
