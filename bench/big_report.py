"""Figures of ``bench/big.py``: medians per read mode and request count, the floor, ratios."""

from __future__ import annotations

import argparse
import statistics
from typing import Any

GIB_MB = 1024


def _decode_steps(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The decode steps of a run: every step after the prefill."""
    return run["steps"][1:]


def summarize(case: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Per ``mode:requests``: median decode-step wall, bytes and floor; peak RSS; page cache."""
    bandwidth = statistics.median(case["bandwidths"])
    out: dict[str, Any] = {"bandwidth_gb_s": bandwidth / 1e9, "rows": {}}
    for key, runs in case["runs"].items():
        steps = [s for run in runs for s in _decode_steps(run)]
        wall = statistics.median(s["wall_s"] for s in steps)
        step_bytes = statistics.median(s["bytes"] for s in steps)
        floor = step_bytes / bandwidth
        ratios = [s["wall_s"] / (s["bytes"] / bandwidth) for s in steps if s["bytes"]]
        out["rows"][key] = {
            "step_s": wall,
            "step_s_all": [round(s["wall_s"], 2) for s in steps],
            "step_gb": step_bytes / 1e9,
            "floor_s": floor,
            "wall_over_floor": wall / floor if floor else None,
            "wall_over_floor_median": statistics.median(ratios) if ratios else None,
            "wait_s": statistics.median(s["wait_s"] for s in steps),
            "cache_hits": statistics.median(s.get("cache_hits", 0) for s in steps),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "rss_over_budget_mb": max(r["peak_rss_mb"] for r in runs) - args.budget_mb,
            "major_faults": max(r["major_faults"] for r in runs),
            "cached_growth_mb": max(r["cached_max_mb"] - r["cached_before_mb"] for r in runs),
            "direct_io": runs[0]["direct_io"],
            "plan": runs[0]["plan"],
            "load": [r["load_before"][0] for r in runs] + [r["load_after"][0] for r in runs],
        }
    for mode in {key.split(":")[0] for key in out["rows"]}:
        one, many = out["rows"].get(f"{mode}:1"), out["rows"].get(f"{mode}:{args.batch}")
        if one and many:
            out[f"{mode}_batch_step_ratio"] = many["step_s"] / one["step_s"]
    return out


def print_case(case: dict[str, Any], args: argparse.Namespace) -> None:
    s = case["summary"]
    print(
        f"\n{case['label']}: {case['shape']} ({case['layers'] or 'all'} layers), "
        f"{case['set_bytes'] / 1e9:.1f} GB; cold sequential O_DIRECT read "
        f"{s['bandwidth_gb_s']:.2f} GB/s (median of {len(case['bandwidths'])}: "
        + ", ".join(f"{b / 1e9:.2f}" for b in case["bandwidths"])
        + ")"
    )
    print(
        "  reads  reqs  step s  GB/step  floor s  wall/floor  wait s  peak RSS MiB  "
        "over budget  maj.faults  page cache +MiB  load"
    )
    for key, row in sorted(s["rows"].items()):
        mode, requests = key.split(":")
        ratio = row["wall_over_floor"]
        print(
            f"  {mode:<5}  {requests:>4}  {row['step_s']:>6.2f}  {row['step_gb']:>7.2f}  "
            f"{row['floor_s']:>7.2f}  {'-' if ratio is None else f'{ratio:.2f}':>10}  "
            f"{row['wait_s']:>6.2f}  {row['peak_rss_mb']:>12.0f}  "
            f"{row['rss_over_budget_mb']:>11.0f}  {row['major_faults']:>10}  "
            f"{row['cached_growth_mb']:>15.0f}  " + "/".join(f"{x:.1f}" for x in row["load"])
        )
        hits = f"  chunk-cache hits/step: {row['cache_hits']:g}" if mode == "cache" else ""
        print(f"         steps: {row['step_s_all']}  plan: {row['plan']}{hits}")
    for key, value in s.items():
        if key.endswith("_batch_step_ratio"):
            print(
                f"  {key.split('_')[0]} reads: one step of {args.batch} requests / one request's"
                f" step = {value:.2f}"
            )
    print(
        f"  budget {args.budget_mb} MiB; peak RSS limit budget + 1 GiB = "
        f"{args.budget_mb + GIB_MB} MiB",
        flush=True,
    )
