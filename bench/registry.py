"""Every benchmark ``bench/run.py`` knows, in the order it runs them.

To add one: write ``bench/<module>.py`` with a function ``figures(profile: Profile) ->
list[Figure]`` (see ``bench/figures.py``; ``profile.quick`` says how long it may take), and
add a :class:`Bench` line below. ``opt_in`` benchmarks (long ones: peers, big models) run
only when named with ``--with NAME``; the rest run in ``make bench`` and
``make bench-quick``. Each runs in a process of its own (its own torch threads, malloc
arenas and memory peak), so one benchmark cannot slow the next.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Bench:
    """One benchmark.

    Args:
        name: what ``--only`` / ``--with`` and the results file call it.
        module: the module in ``bench/`` holding the function.
        what: one line: what it compares.
        function: the function returning the figures (``figures(profile)``).
        opt_in: run only when named with ``--with``.
        full_only: left out of the quick profile (``make bench-quick``) unless named.
        minutes: rough duration (quick, full) on a quiet 2-core machine.
        timeout_min: the run is stopped (and reported as an error) after this.
    """

    name: str
    module: str
    what: str
    function: str = "figures"
    opt_in: bool = False
    full_only: bool = False
    minutes: tuple[float, float] = (1.0, 2.0)
    timeout_min: float = 40.0


BENCHES: tuple[Bench, ...] = (
    Bench(
        "cache_read",
        "cache_read",
        "ChunkCache.get (BLAKE3- and sha256-verified) vs raw redis-py GETs of the same parts",
        minutes=(0.3, 0.5),
    ),
    Bench(
        "cache_shards",
        "cache_shards",
        "one cache shard vs 8 shards on one Redis server",
        minutes=(0.2, 0.5),
    ),
    Bench(
        "s3_range_read",
        "s3_range_read",
        "S3Backend's concurrent ranged GETs vs one plain GET (a range server on loopback)",
        minutes=(0.3, 0.5),
    ),
    Bench(
        "pipeline",
        "pipeline",
        "tiny jobs through the Surfing Weights pipeline vs arq's own no-op jobs",
        minutes=(0.3, 0.5),
    ),
    Bench(
        "engine",
        "engine",
        "MiniLM: the engine resident (a) and cold from Redis (b) vs transformers in memory",
        minutes=(0.7, 1.2),
    ),
    Bench(
        "batching",
        "batching",
        "SmolLM2 at a 25 % budget: 16 requests batched vs one by one (c)",
        minutes=(2.0, 3.5),
    ),
    Bench(
        "streamed",
        "streamed",
        "one streamed SmolLM2 request vs in memory (d); bfloat16 vs float32 chunks (e)",
        minutes=(1.5, 2.5),
    ),
    Bench(
        "packed",
        "packed_streamed",
        "SmolLM2 kept packed (GGUF Q4_1), streamed at 25 % vs transformers in memory",
        full_only=True,
        minutes=(1.5, 3.5),
    ),
    Bench(
        "quality",
        "quality",
        "perplexity of packed and re-quantized SmolLM2 vs float32; MiniLM int8 cosine",
        full_only=True,
        minutes=(3.0, 6.0),
    ),
    Bench(
        "moe",
        "moe",
        "mixture of experts: expert bytes fetched per decode step vs whole layers",
        minutes=(0.7, 2.0),
    ),
    Bench(
        "serving",
        "serving",
        "continuous vs static batching (streaming and not) through the Producer",
        minutes=(2.5, 8.0),
    ),
    Bench(
        "gateway_sweep",
        "sweep",
        "request-rate sweep through `sw serve` with the openai client: tokens/s, TTFT, ITL",
        minutes=(3.0, 25.0),
    ),
    Bench(
        "peers",
        "peers",
        "the engine vs AirLLM 4.0.0, accelerate's disk offload and (packed) llama.cpp "
        "(needs the bench extra)",
        opt_in=True,
        minutes=(15.0, 30.0),
        timeout_min=90.0,
    ),
)


def by_name() -> dict[str, Bench]:
    return {bench.name: bench for bench in BENCHES}


def select(only: list[str], with_: list[str], *, quick: bool = False) -> list[Bench]:
    """The benchmarks to run: ``only`` (any, opt-in ones too) when given, else every
    benchmark that is not opt-in (in the ``quick`` profile, nor full-only) plus those named
    in ``with_``.

    Raises:
        ValueError: an unknown name.
    """
    known = by_name()
    unknown = [name for name in [*only, *with_] if name not in known]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if only:
        return [b for b in BENCHES if b.name in only]
    return [b for b in BENCHES if b.name in with_ or not (b.opt_in or (quick and b.full_only))]
