"""Which chunks the shared cache takes in when it is full: frequency-gated admission.

Every decode step of a model reads its chunks in the same order, so a model larger than the
cache is a *cyclic sweep*. Plain LRU evicts each chunk just before it is needed again and
gets no hits at all (measured with real workers: hit rate 0.04-0.06, the whole model read
from storage every token); the best a cache of ``C`` bytes can do on a sweep of ``N`` bytes
is keep a stable ``C`` of them: a hit rate of about ``C/N``.

The policy (run atomically in ``sw_core/lua/cache_lookup.lua``):

- every counted lookup adds one *use* to the chunk's count in the shard's use-count hash
  (``Keys.cache_freq``), cached or not; every ``max(AGING_WINDOW_MIN, 10 x cached chunks)``
  counted lookups all counts are halved (and zeros dropped), so the counts say how often a
  chunk was used *lately* and the hash never holds more than two windows' worth of ids;
- a miss is *admitted* when the chunk fits in free room, or when every entry it would evict
  -- least recently used first, until it fits -- was used less often than the missed chunk
  had been before this lookup. Ties keep the entry that is there.

What that gives (``bench/cache_policy.py`` replays the traces through models of LRU,
insert-at-LRU, MRU, a per-model pinned prefix and this policy): on a sweep of ``2C`` the
chunks cached first stay (every chunk of the sweep is used once per sweep, so a candidate
never beats an entry) and each later sweep hits ``C/N``; a hot model that fits keeps its
entries while a bigger one sweeps past (the sweep's chunks are used no more often); a one-off
read of another model evicts nothing once the cache is full; and a model that becomes more
used than what the cache holds takes its place within a few sweeps (insert-at-LRU never lets
it in; MRU lets it in slowly while the sweep's hits decay).

A refused chunk is not worth a trip through the cache: readers load it from storage
themselves (:class:`~sw_core.engine.io.sources.CachedChunkSource`, the workers'
``RemoteChunkSource``), so a sweep the cache cannot hold costs what reading the store
directly costs, plus one lookup per chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: Fewest counted lookups between two halvings of the use counts (more with more entries).
AGING_WINDOW_MIN = 128


@dataclass(frozen=True)
class Lookup:
    """What :meth:`~sw_core.cache.ChunkCache.lookup` found."""

    #: The chunk's verified bytes on a hit (not verified yet when ``check`` is set), None
    #: on a miss.
    data: memoryview | None
    #: On a miss: whether the cache would take the chunk in (load it through the cache);
    #: False means read it from storage past the cache.
    admit: bool = False
    #: For a hit read with ``verify_later``: hashes ``data`` and says whether it matches
    #: (False: the entry was dropped as corrupt); to be called before the bytes are used.
    check: Callable[[], bool] | None = None

    @property
    def hit(self) -> bool:
        return self.data is not None
