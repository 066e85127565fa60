"""The gateway's one door to the job pipeline: submit, wait, stream and cancel through
:class:`~producer.Producer`, and ask the heartbeats whether any inference worker lives.

Every HTTP request becomes ordinary jobs on ``sw:jobs`` (retries, dead letters, counters and
the monitor see them like any other). A stream is fed by the job's token events
(``Producer.stream``) as the worker makes them; a worker that sends none (a custom handler)
still ends the stream with the whole answer from ``Producer.result``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from producer import Producer
from sw_core.exceptions import ModelError, SurfingError
from sw_core.keys import Keys
from sw_core.pipeline.registry import ModelRegistry
from sw_core.schema import JobStatus, StreamEvent
from sw_core.settings import Settings

log = logging.getLogger(__name__)
#: How long one answer about live inference workers is reused.
LIVENESS_CACHE_S = 1.0
#: OpenAI's words for the engine's finish reasons.
FINISH_REASONS = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass(frozen=True)
class Delta:
    """More text of answer ``index`` (with ``logprobs``: the entries of its tokens)."""

    text: str
    index: int = 0
    logprobs: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class Finish:
    """Answer ``index`` ended: why, and the token counts."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    index: int = 0


class JobBackend:
    """Submits and follows the jobs of gateway requests.

    Args:
        producer: the producer the jobs go through (closed by :meth:`close`).
        settings: heartbeat TTL and key prefix.
    """

    def __init__(self, producer: Producer, settings: Settings) -> None:
        self.producer = producer
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.registry = ModelRegistry(producer.redis, settings)
        self._live: tuple[float, int] = (0.0, 0)

    async def close(self) -> None:
        await self.producer.close()

    # ---------------------------------------------------------------- models and workers
    async def models(self) -> dict[str, str]:
        """Every registered model name -> location."""
        return await self.registry.all()

    async def synthetic_models(self) -> dict[str, str]:
        """Registered models of random weights (``sw synth``) -> what they imitate."""
        return await self.registry.synthetic()

    async def has_model(self, name: str) -> bool:
        try:
            await self.registry.resolve(name)
        except ModelError:
            return False
        return True

    async def live_inference_workers(self) -> int:
        """Inference workers whose heartbeat is younger than ``heartbeat_ttl_s`` (cached 1 s)."""
        now = time.monotonic()
        if now < self._live[0]:
            return self._live[1]
        redis = self.producer.redis
        since_ms = int((time.time() - self.settings.heartbeat_ttl_s) * 1000)
        ids = await redis.zrangebyscore(self.keys.workers, since_ms, "+inf")
        count = 0
        if ids:
            async with redis.pipeline(transaction=False) as pipe:
                for worker_id in ids:
                    name = worker_id.decode() if isinstance(worker_id, bytes) else str(worker_id)
                    pipe.hget(self.keys.worker(name), "kind")
                kinds = await pipe.execute()
            count = sum(1 for kind in kinds if kind in (b"inference", "inference"))
        self._live = (now + LIVENESS_CACHE_S, count)
        return count

    # ---------------------------------------------------------------- jobs
    async def submit(
        self, model: str, task: str, inputs: list[Any], *, deadline_s: float, **params: Any
    ) -> str:
        """Enqueue one job; past ``deadline_s`` it is not started, or stopped (expired)."""
        return await self.producer.submit(model, task, inputs, deadline_s=deadline_s, **params)

    async def result(self, job_id: str, timeout_s: float) -> Any:
        """The job's result (its error raised as its class; JobTimeoutError after timeout_s)."""
        return await self.producer.result(job_id, timeout_s=timeout_s)

    async def stream(
        self, job_id: str, timeout_s: float, answers: int = 1
    ) -> AsyncGenerator[Delta | Finish, None]:
        """The ``answers`` answers (``n``) of a one-input generate job as deltas, each with
        its index, and one :class:`Finish` per answer; the iteration ends after the last.

        Raises:
            SurfingError: the job failed (as its class), was cancelled or expired.
            JobTimeoutError: nothing came for ``timeout_s`` seconds.
        """
        # text each answer's client has; a restarted job's text is replayed up to there
        sent = [""] * answers
        replay: list[str] | None = None
        finishes: dict[int, Finish] = {}
        events = self.producer.stream(job_id, timeout_s=timeout_s)
        async for event in events:
            kind = event.get("type")
            index = event.get("index", 0)
            if kind == StreamEvent.RESTART:
                replay = [""] * answers
            elif kind == StreamEvent.TOKEN and isinstance(index, int) and 0 <= index < answers:
                text = str(event.get("text", ""))
                logprobs = event.get("logprobs")
                if replay is not None:
                    replay[index] += text
                    new = _beyond(sent[index], replay[index])
                    if new is None:
                        continue  # (its logprobs were sent the first time)
                    text = new
                sent[index] += text
                if text or logprobs:
                    yield Delta(text, index, logprobs if isinstance(logprobs, list) else None)
            elif kind == StreamEvent.END and isinstance(index, int) and 0 <= index < answers:
                finishes[index] = finish_of(event, event.get("completion_tokens"), index=index)
                yield finishes[index]
            elif kind == StreamEvent.FINAL:
                if len(finishes) < answers or event.get("status") != JobStatus.DONE:
                    # no end events (a worker without token streaming), or the job failed:
                    # the result says which (the job's error is raised as its class)
                    outputs = await self.result(job_id, timeout_s)
                    for i, output in enumerate(outputs[:answers]):
                        if i in finishes:
                            continue
                        rest = _beyond(sent[i], str(output.get("text") or ""))
                        if rest:
                            yield Delta(rest, i)
                        yield finish_of(output, index=i)
                return

    async def cancel(self, job_id: str) -> None:
        """Cancel a job nobody waits for any more."""
        status = await self.producer.cancel(job_id)
        log.info("job %s cancelled: %s", job_id, status)


def finish_of(
    output: dict[str, Any], completion_tokens: int | None = None, *, index: int = 0
) -> Finish:
    """The :class:`Finish` of one generate output or ``end`` event (reason, token counts)."""
    if completion_tokens is None:
        completion_tokens = len(output.get("token_ids") or [])
    return Finish(
        finish_reason=FINISH_REASONS.get(str(output.get("finish_reason")), "stop"),
        prompt_tokens=int(output.get("prompt_tokens") or 0),
        completion_tokens=int(completion_tokens),
        index=index,
    )


def total_usage(finishes: list[Finish]) -> Finish:
    """One request's usage over its answers: the prompt (it ran once) plus every answer."""
    return Finish(
        finishes[-1].finish_reason if finishes else "stop",
        max((f.prompt_tokens for f in finishes), default=0),
        sum(f.completion_tokens for f in finishes),
    )


def _beyond(sent: str, text: str) -> str | None:
    """What ``text`` adds to the ``sent`` prefix; None while it is still within it.

    Raises:
        SurfingError: ``text`` differs from what was sent (a restarted job that sampled
            another answer): the stream cannot take back what the client has.
    """
    if len(text) <= len(sent):
        if not sent.startswith(text):
            raise SurfingError("the job restarted on another worker with a different answer")
        return None
    if not text.startswith(sent):
        raise SurfingError("the job restarted on another worker with a different answer")
    return text[len(sent) :]
