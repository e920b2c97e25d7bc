"""The click front end: parse options, build configs, call the library.

OpenMP threads that wait for work sleep instead of spinning (unless the caller chose otherwise): on a machine shared
with other jobs a spinning thread burns CPU time while the thread it waits for has no core, which tripled the
pipeline's CPU time on 2 busy cores (docs/performance.md). Set here, before anything imports torch."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
