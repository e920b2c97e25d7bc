"""Evaluation's sampling on a CPU: batches run threads at a time, one intra-op thread each (what run_sampler does),
against each batch on all the intra-op threads (what it did before), for the digits teacher (dpm3 x 16).

    python benchmarks/eval_threads.py --samples 2048 --threads 2 --repeats 2
Prints wall and CPU seconds per mode, alternating, and whether both gave the same bytes. How OpenMP's idle threads
wait matters to the second mode: run it under OMP_WAIT_POLICY=PASSIVE and GOMP_SPINCOUNT=10000 too (threads.py).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cmt_pipeline.priors import draw_priors
from cmt_pipeline.sampling import TeacherSampler, run_sampler
from cmt_pipeline.teachers import load_teacher


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sampler = TeacherSampler(load_teacher("builtin"), "dpm3", 16)
    prior, labels = draw_priors(101, np.arange(args.samples), sampler.shape, sampler.num_classes, "random")
    results = {}
    for _ in range(args.repeats):
        for mode in ("intra-op threads per batch", "one thread per batch"):
            t0, c0 = time.perf_counter(), time.process_time()
            if mode == "one thread per batch":
                x = run_sampler(sampler, prior, labels, batch_size=args.batch_size)
            else:  # the former loop: one batch at a time on every intra-op thread
                with torch.no_grad():
                    x = torch.cat([sampler(torch.from_numpy(prior[b:b + args.batch_size]), None)
                                   for b in range(0, args.samples, args.batch_size)])
            print(f"{mode:28s} wall {time.perf_counter() - t0:7.2f} s  cpu {time.process_time() - c0:7.2f} s", flush=True)
            results[mode] = x
    print("same bytes:", torch.equal(*results.values()))


if __name__ == "__main__":
    main()
