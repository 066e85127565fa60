"""Run the benchmarks, write their figures to one JSON file and print every goal.

``make bench`` (full profile, writes ``bench/results.json`` and the summary table of
``bench/README.md``) and ``make bench-quick`` (quick profile, ``bench/results-quick.json``,
README untouched) call this. Each benchmark of ``bench/registry.py`` runs in a process of
its own; its figures come back through a JSON file, what it prints goes to the terminal as
it runs. A benchmark that fails or runs past its time limit is recorded as an error and the
others still run (exit status 1 at the end).

The results file keeps one entry per benchmark with its own provenance (commit, time, load
average before and after, the CPU other work used meanwhile), so running one benchmark
again (``--only NAME``) replaces only its entry.

Usage::

    .venv/bin/python bench/run.py [--quick] [--only NAME,...] [--with peers] [--out PATH]
                                  [--readme] [--list]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from figures import ERROR, Figure, Profile  # bench/, beside this script
from machine import REPO, CpuWatch, git_commit, machine_info, now_iso
from registry import BENCHES, Bench, select
from smollm2 import SHARED_ENV

BENCH_DIR = Path(__file__).resolve().parent

SCHEMA = 1
RESULTS = {"full": BENCH_DIR / "results.json", "quick": BENCH_DIR / "results-quick.json"}
#: ``make bench-quick`` should end within this many minutes on a quiet 2-core machine.
QUICK_GOAL_MIN = 15


def child_env(extra_path: str = "", shared_dir: Path | None = None) -> dict[str, str]:
    """The benchmark process's environment: offline, a fixed hash seed, bench/ importable,
    and the run's shared folder (``bench/smollm2.py``) when given."""
    env = dict(os.environ)
    if shared_dir is not None:
        env[SHARED_ENV] = str(shared_dir)
    paths = [str(BENCH_DIR), str(REPO), extra_path, env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONHASHSEED="0", TQDM_DISABLE="1")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_child(bench: Bench, profile: Profile, out: Path) -> int:
    """In the benchmark's own process: call its function, write the figures to ``out``."""
    module = importlib.import_module(bench.module)
    figures: list[Figure] = getattr(module, bench.function)(profile)
    names = [f.name for f in figures]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{bench.name} returned figures with the same name: {duplicates}")
    out.write_text(json.dumps([f.to_json() for f in figures], indent=1))
    return 0


def run_one(
    bench: Bench, profile: Profile, *, extra_path: str = "", shared_dir: Path | None = None
) -> dict[str, Any]:
    """Run one benchmark in a child process; its entry for the results file."""
    entry: dict[str, Any] = {
        "what": bench.what,
        "profile": profile.name,
        "started": now_iso(),
        **git_commit(),
    }
    with tempfile.TemporaryDirectory(prefix="sw-bench-run-") as tmp:
        out = Path(tmp) / "figures.json"
        script = str(Path(__file__).resolve())
        command = [sys.executable, script, "--child", bench.name, "--module", bench.module]
        command += ["--function", bench.function, "--profile", profile.name]
        command += ["--seed", str(profile.seed), "--figures-out", str(out)]
        watch = CpuWatch()
        proc = subprocess.Popen(command, cwd=REPO, env=child_env(extra_path, shared_dir))
        try:
            returncode = proc.wait(timeout=bench.timeout_min * 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            returncode = None
        entry.update(watch.stop())
        if returncode is None:
            entry["error"] = f"ran past its {bench.timeout_min:g} min limit"
        elif returncode != 0 or not out.exists():
            entry["error"] = f"exit status {returncode} (its output above says why)"
        else:
            entry["figures"] = json.loads(out.read_text())
    entry.setdefault("figures", [])
    return entry


def load_results(path: Path) -> dict[str, Any]:
    """The results file, or an empty one."""
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("schema") == SCHEMA:
            return data
    return {"schema": SCHEMA, "benches": {}}


def run_benches(
    benches: list[Bench],
    profile: Profile,
    out: Path,
    *,
    extra_path: str = "",
    registry: tuple[Bench, ...] = BENCHES,
) -> dict[str, Any]:
    """Run ``benches`` one after the other and merge their entries into ``out`` (entries of
    benchmarks no longer in ``registry`` are dropped)."""
    results = load_results(out)
    known = {b.name for b in registry} | {b.name for b in benches}
    results["benches"] = {k: v for k, v in results["benches"].items() if k in known}
    info = machine_info()
    run: dict[str, Any] = {
        "started": now_iso(),
        "profile": profile.name,
        "seed": profile.seed,
        "benches": [b.name for b in benches],
        "machine": info,
        **git_commit(),
    }
    watch = CpuWatch()
    # what several benchmarks prepare alike (bench/smollm2.py) is written once per run
    with tempfile.TemporaryDirectory(prefix="sw-bench-shared-") as shared:
        for bench in benches:
            minutes = bench.minutes[0 if profile.quick else 1]
            print(f"\n===== {bench.name}: {bench.what} (about {minutes:g} min)", flush=True)
            entry = run_one(bench, profile, extra_path=extra_path, shared_dir=Path(shared))
            entry["machine"] = info
            results["benches"][bench.name] = entry
            status = entry.get("error") or f"{len(entry['figures'])} figures"
            print(f"===== {bench.name}: {status} in {entry['seconds']:.0f} s", flush=True)
            results["last_run"] = {**run, **watch.stop()}
            write_results(out, results)  # after each benchmark: a later failure loses nothing
    results["last_run"] = {**run, **watch.stop(), "finished": now_iso()}
    write_results(out, results)
    return results


def write_results(path: Path, results: dict[str, Any]) -> None:
    ordered = {b.name: results["benches"][b.name] for b in BENCHES if b.name in results["benches"]}
    ordered.update({k: v for k, v in results["benches"].items() if k not in ordered})
    results["benches"] = ordered
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the quick profile (minutes)")
    parser.add_argument("--only", default="", help="run only these (comma-separated)")
    parser.add_argument("--with", dest="with_", default="", help="add opt-in ones (peers)")
    parser.add_argument("--out", type=Path, help="results file (default by profile)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--readme", action="store_true", help="rewrite bench/README.md's table")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--module", help=argparse.SUPPRESS)
    parser.add_argument("--function", default="figures", help=argparse.SUPPRESS)
    parser.add_argument("--profile", default="full", help=argparse.SUPPRESS)
    parser.add_argument("--figures-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        bench = Bench(args.child, args.module, "", function=args.function)
        return run_child(bench, Profile(args.profile, args.seed), args.figures_out)
    if args.list:
        for b in BENCHES:
            flag = (
                " (opt-in: --with)" if b.opt_in else " (full profile only)" if b.full_only else ""
            )
            print(f"{b.name:14s} {b.minutes[0]:4g} / {b.minutes[1]:4g} min  {b.what}{flag}")
        return 0
    from report import print_table, rewrite_readme  # bench/report.py

    profile = Profile("quick" if args.quick else "full", args.seed)
    split = [[n for n in text.split(",") if n] for text in (args.only, args.with_)]
    try:
        benches = select(*split, quick=profile.quick)
    except ValueError as exc:
        parser.error(str(exc))
    out = args.out or RESULTS[profile.name]
    started = time.perf_counter()
    try:
        results = run_benches(benches, profile, out)
    except Exception:
        traceback.print_exc()
        return 1
    elapsed_min = (time.perf_counter() - started) / 60
    print(f"\nresults: {out} ({elapsed_min:.1f} min)\n")
    print_table(results, only=[b.name for b in benches])
    if args.readme:
        rewrite_readme(results)
        print("\nbench/README.md summary table rewritten")
    if profile.quick and not args.only:
        last = results["last_run"]
        print(
            f"\nmake bench-quick: {elapsed_min:.1f} min (goal < {QUICK_GOAL_MIN} min on 2 cores; "
            f"load average {last['load_before'][0]:g} -> {last['load_after'][0]:g}, other work "
            f"{last.get('other_cpu_cores', '?')} cores meanwhile)"
        )
    failed = [b.name for b in benches if results["benches"][b.name].get("error")]
    if failed:
        print(f"\n{ERROR}: {', '.join(failed)} did not finish (see above)")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
