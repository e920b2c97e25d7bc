"""CPU time of `cmt pipeline` on a quiet machine and beside competing CPU-bound processes, in one run.

A process whose threads spin while they wait for a core (OpenMP's default) burns CPU time when the machine is
shared; the CLI makes them sleep (cli/__init__.py) and sizes every command's pool to its share of the CPUs
(cmt_pipeline/threads.py). This runs the same pipeline config quiet, then beside --competitors busy processes,
and reports wall and CPU seconds (user + system of the pipeline process and its children) for each.

    python benchmarks/threads_under_load.py                              # this checkout
    python benchmarks/threads_under_load.py --code /tmp/old --label before   # another checkout (e.g. an older commit)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def busy() -> None:
    while True:
        pass


def run_pipeline(code: Path, config: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    env.pop("OMP_WAIT_POLICY", None)  # each checkout's own CLI decides
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "cli", "pipeline", str(config), "--out", str(out), "--quiet"],
                          cwd=code, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"pipeline failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--code", default=str(HERE.parent), help="checkout whose `python -m cli` runs (default: this one)")
    ap.add_argument("--config", default=str(HERE / "pipeline-small.toml"))
    ap.add_argument("--competitors", type=int, default=2, help="busy processes beside the loaded run")
    ap.add_argument("--label", default="", help="a name for this checkout in the report")
    ap.add_argument("--json", help="write the report here as JSON")
    args = ap.parse_args()
    code, config = Path(args.code).resolve(), Path(args.config).resolve()
    commit = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    report = {"label": args.label, "commit": commit, "config": str(config), "cpus": os.cpu_count(),
              "competitors": args.competitors, "load_average_at_start": round(os.getloadavg()[0], 2)}
    tmp = Path(tempfile.mkdtemp(prefix="cmt-threads-"))
    try:
        report["quiet"] = run_pipeline(code, config, tmp / "quiet")
        procs = [mp.Process(target=busy, daemon=True) for _ in range(args.competitors)]
        for p in procs:
            p.start()
        try:
            report["loaded"] = run_pipeline(code, config, tmp / "loaded")
        finally:
            for p in procs:
                p.terminate()
        report["cpu_ratio"] = round(report["loaded"]["cpu_s"] / report["quiet"]["cpu_s"], 2)
        report["wall_ratio"] = round(report["loaded"]["wall_s"] / report["quiet"]["wall_s"], 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
