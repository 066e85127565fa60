"""A streamed answer as OpenAI's Server-Sent Events: the chunks, keep-alives, the optional
usage chunk and ``[DONE]``; a failure after the stream began becomes an error event.

:func:`sse_events` is fed by the job's token stream (:meth:`JobBackend.stream`); the caller
(:class:`~gateway.service.Gateway`) releases the request's slot and cancels the job when the
client goes away before the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from gateway import responses
from gateway.errors import deadline, error_from_exception
from gateway.jobs import Delta, Finish, total_usage
from sw_core.exceptions import JobTimeoutError

#: Seconds without an event after which a stream gets a keep-alive comment line.
KEEPALIVE_S = 15.0


@dataclass
class StreamPlan:
    """What one stream sends: the job, the model, chat or text chunks, a usage chunk."""

    job_id: str
    model: str
    chat: bool
    include_usage: bool
    #: ``time.monotonic()`` when the request arrived (for the time to its first token).
    started: float
    #: Answers of the request (``n``): chunks carry their choice's index.
    answers: int = 1


@dataclass
class StreamEnd:
    """How a stream ended, for the caller: finished (nothing left to cancel), its usage."""

    finished: bool = False
    finish: Finish | None = None
    status: int = 200


async def sse_events(
    plan: StreamPlan,
    events: AsyncIterator[Delta | Finish],
    timeout_s: float,
    end: StreamEnd,
    on_first_token: Callable[[float], None],
) -> AsyncIterator[bytes]:
    """OpenAI chunks fed by ``events``, then ``[DONE]``; ``end`` says how it ended."""
    usage_extra: dict[str, Any] = {"usage": None} if plan.include_usage else {}

    def chunk(**kwargs: Any) -> bytes:
        return responses.sse(
            {**responses.chunk(plan.job_id, plan.model, chat=plan.chat, **kwargs), **usage_extra}
        )

    first = True
    finishes: list[Finish] = []
    offsets = [0] * plan.answers  # text sent per answer (a completion's text_offset)
    try:
        if plan.chat:
            for index in range(plan.answers):
                yield chunk(text="", first=True, index=index)
        async for event in _with_keepalive(events, timeout_s):
            if event is None:
                yield responses.KEEPALIVE
            elif isinstance(event, Delta):
                if first:
                    first = False
                    on_first_token(time.monotonic() - plan.started)
                logprobs = (
                    responses.chat_logprobs(event.logprobs)
                    if plan.chat
                    else responses.completion_logprobs(event.logprobs, offsets[event.index])
                )
                offsets[event.index] += sum(len(e["token"]) for e in event.logprobs or [])
                yield chunk(text=event.text, index=event.index, logprobs=logprobs)
            else:
                finishes.append(event)
                end.finish = total_usage(finishes)
                yield chunk(finish=event, index=event.index)
        end.finished = True
        if plan.include_usage and end.finish is not None:
            yield responses.sse(
                responses.usage_chunk(plan.job_id, plan.model, plan.chat, end.finish)
            )
        yield responses.DONE
    except (TimeoutError, JobTimeoutError):
        end.status = 504
        message = (
            f"job {plan.job_id} did not finish in time: SW_GATEWAY_TIMEOUT_S={timeout_s:g} s passed"
        )
        yield deadline(message).sse()
        yield responses.DONE
    except Exception as exc:
        error = error_from_exception(exc)
        end.status = error.status
        end.finished = True  # the job failed: nothing left to cancel
        yield error.sse()
        yield responses.DONE


async def _with_keepalive(
    events: AsyncIterator[Delta | Finish], timeout_s: float
) -> AsyncIterator[Delta | Finish | None]:
    """``events``, with None after each :data:`KEEPALIVE_S` without one.

    Raises:
        TimeoutError: the events did not end within ``timeout_s``.
    """
    loop = asyncio.get_running_loop()
    end_at = loop.time() + timeout_s
    while True:
        pending = asyncio.ensure_future(anext(events))
        try:
            while not pending.done():
                left = end_at - loop.time()
                if left <= 0:
                    raise TimeoutError
                await asyncio.wait({pending}, timeout=min(KEEPALIVE_S, left))
                if not pending.done():
                    yield None
            try:
                yield pending.result()
            except StopAsyncIteration:
                return
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
