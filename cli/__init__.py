"""The click front end: parse options, build configs, call the library.

How OpenMP's idle threads wait is set here, before anything imports torch: they spin briefly on an idle machine and
sleep at once on a busy one, unless the caller set OMP_WAIT_POLICY or GOMP_SPINCOUNT (cmt_pipeline/threads.py,
`openmp_wait`)."""

import os

from cmt_pipeline.threads import openmp_wait

os.environ.update(openmp_wait())
