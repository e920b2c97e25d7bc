"""How OpenMP's idle threads wait, against mid-training's speed and CPU time, quiet and beside busy processes.

    python benchmarks/openmp_wait.py [--store STORE] [--steps 200] [--pairs 2] [--busy 0]

Runs `cmt mid-train --config configs/digits.toml` for --steps steps (no evaluations, checkpoints or grids) once per
setting per round, the settings alternating: OMP_WAIT_POLICY=PASSIVE (sleep at once), GOMP_SPINCOUNT=10000 (what
the CLI chooses on an idle machine, cmt_pipeline/threads.py) and GOMP_SPINCOUNT=300000 (libgomp's own default).
Prints the training steps/s of the run's last log line, its CPU seconds (user + system) and wall seconds, median
over the rounds, and the load average. --busy N starts N `while True: pass` processes first. Without --store it
generates 1024 trajectories of the built-in teacher into a temporary folder. Results: docs/performance.md,
"OpenMP's waiting threads".
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {"PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"}, "spin 10000": {"GOMP_SPINCOUNT": "10000"},
            "spin 300000 (libgomp default)": {"GOMP_SPINCOUNT": "300000"}}


def busy() -> None:
    while True:
        pass


def cmt(args: list[str], env: dict) -> None:
    subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env, check=True, capture_output=True)


def run(store: str, out: Path, steps: int, setting: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    cmt(["mid-train", "--config", "configs/digits.toml", "--data", store, "--out", str(out), "--steps", str(steps),
         "--quiet", "--no-tensorboard", "--eval-every", "1000000", "--checkpoint-every", "1000000",
         "--sample-every", "0", "--log-every", str(steps)], {**env, **setting})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    return {"steps_per_s": last["steps_per_s"], "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime
            - before.ru_stime, "wall_s": wall}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", help="a digits trajectory store (default: 1024 generated trajectories)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--pairs", type=int, default=2, help="rounds over the settings")
    p.add_argument("--busy", type=int, default=0, help="busy processes beside the runs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store
        if store is None:
            store = f"{tmp}/store"
            cmt(["generate-trajectories", "--teacher", "builtin", "--num-samples", "1024", "--out", store,
                 "--quiet"], dict(os.environ))
        procs = [mp.Process(target=busy, daemon=True) for _ in range(args.busy)]
        for proc in procs:
            proc.start()
        loads, results = [os.getloadavg()[0]], {name: [] for name in SETTINGS}
        try:
            for r in range(args.pairs):
                for i, (name, setting) in enumerate(SETTINGS.items()):
                    results[name].append(run(store, Path(tmp) / f"run-{r}-{i}", args.steps, setting))
                    loads.append(os.getloadavg()[0])
                    print(name, results[name][-1], f"load {loads[-1]:.1f}", flush=True)
        finally:
            for proc in procs:
                proc.terminate()
    print(f"\n{args.steps} mid-training steps (configs/digits.toml), median of {args.pairs}, beside {args.busy} busy "
          f"processes, load average {min(loads):.1f}-{max(loads):.1f}, {os.cpu_count()} CPUs:\n")
    print("| OpenMP wait | steps/s | CPU s | wall s |\n|---|---:|---:|---:|")
    for name, rows in results.items():
        med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
        print(f"| {name} | {med['steps_per_s']:.2f} | {med['cpu_s']:.1f} | {med['wall_s']:.1f} |")


if __name__ == "__main__":
    main()
