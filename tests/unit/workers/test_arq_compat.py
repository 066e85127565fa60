"""What ``workers.arq_compat`` relies on in arq, checked: the sources of the ``Worker``
methods it adapts, and the settings dict that arq's command line reads."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from arq.version import VERSION as ARQ_VERSION
from arq.worker import Worker, get_kwargs

from workers.arq_compat import (
    ARQ_SOURCE_SHA256,
    LazyWorkerSettings,
    arq_changes,
    redis_outages_tolerated,
    tolerate_redis_outages,
)


def test_the_installed_arq_is_the_one_the_adaptation_was_written_for() -> None:
    """Fails on an arq whose adapted methods changed: read the new ``Worker`` source, adapt
    ``workers/arq_compat.py`` (or drop what arq now does itself), then record the digests."""
    assert arq_changes() == [], (
        f"arq {ARQ_VERSION}: Worker methods changed since workers.arq_compat was written"
    )


def test_a_changed_or_missing_arq_method_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    async def start_jobs(self: Worker, job_ids: list[bytes]) -> None:
        """A new arq's start_jobs."""

    monkeypatch.setattr(Worker, "start_jobs", start_jobs)
    monkeypatch.delattr(Worker, "_release_sem_dec_counter_on_complete")
    assert arq_changes() == ["start_jobs", "_release_sem_dec_counter_on_complete"]


def test_the_adaptation_wraps_arq_once_and_keeps_its_methods_reachable() -> None:
    tolerate_redis_outages()
    tolerate_redis_outages()
    assert redis_outages_tolerated()
    for name in ("_poll_iteration", "start_jobs", "run_job"):
        adapted = getattr(Worker, name)
        assert adapted.__name__ == name
        assert not getattr(adapted.__wrapped__, "sw_adapted", False)  # one layer, arq's below
        assert inspect.signature(adapted) == inspect.signature(adapted.__wrapped__)
    assert arq_changes() == []  # the digests are of arq's methods, not of the wrappers
    assert set(ARQ_SOURCE_SHA256) >= {"_poll_iteration", "start_jobs", "run_job"}


def test_lazy_settings_build_once_on_the_first_read_and_not_on_repr() -> None:
    built: list[int] = []

    def build() -> dict[str, Any]:
        built.append(1)
        return {"queue_name": "q", "poll_delay": 0.05, "not_a_worker_argument": 1}

    settings = LazyWorkerSettings("test node", build)
    assert "test node" in repr(settings) and "SW_*" in repr(settings)
    assert isinstance(settings, dict) and built == []
    # what arq's command line does with it (create_worker and check_health)
    assert get_kwargs(settings) == {"queue_name": "q", "poll_delay": 0.05}
    assert built == [1] and "built" in repr(settings)
    assert get_kwargs(settings) == {"queue_name": "q", "poll_delay": 0.05}
    assert built == [1]


@pytest.mark.parametrize(
    "read",
    [
        lambda s: dict(s),
        lambda s: {**s},
        lambda s: dict(s.items()),
        lambda s: {k: s[k] for k in s},
        lambda s: {k: s.get(k) for k in list(s.keys())},
        lambda s: dict(zip(s.keys(), s.values(), strict=True)),
    ],
)
def test_every_read_of_lazy_settings_sees_the_built_settings(read: Any) -> None:
    settings = LazyWorkerSettings("test", lambda: {"a": 1, "b": 2})
    assert read(settings) == {"a": 1, "b": 2}


def test_lazy_settings_answer_as_the_mapping_they_build() -> None:
    settings = LazyWorkerSettings("test", lambda: {"a": 1})
    assert len(settings) == 1
    settings = LazyWorkerSettings("test", lambda: {"a": 1})
    assert "a" in settings and "b" not in settings
    settings = LazyWorkerSettings("test", lambda: {"a": 1})
    assert settings == {"a": 1} and settings != {}
    assert settings.get("b", 3) == 3
    with pytest.raises(KeyError):
        settings["b"]
