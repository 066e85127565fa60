"""The gateway's request handling, independent of the web framework: checks, jobs, answers.

:class:`Gateway` turns one parsed OpenAI request into a job on ``sw:jobs`` and its result
into OpenAI's response (or an SSE stream of chunks, :mod:`gateway.streams`). Before anything
is queued it checks the model (404), the open-request bound (429), that an inference worker
is alive (503) and that the prompt fits the model (400). A client that goes away -- from a
stream or while it waits for a whole answer -- cancels its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from gateway import responses
from gateway.errors import (
    ApiError,
    deadline,
    error_from_exception,
    no_worker,
    too_busy,
    unknown_model,
)
from gateway.jobs import JobBackend, finish_of, total_usage
from gateway.metrics import GatewayCounters
from gateway.prompt_limits import check_prompt_fits
from gateway.requests import EmbedCall, GenerateCall
from gateway.streams import StreamEnd, StreamPlan, sse_events
from gateway.tokens import TokenCounter
from sw_core.exceptions import JobTimeoutError
from sw_core.settings import Settings

log = logging.getLogger(__name__)
#: Waits until the request's client has gone away (never returns while it is there).
Gone = Callable[[], Awaitable[None]]
#: Status recorded for a request whose client left before its answer.
CLIENT_GONE = 499


class Gateway:
    """State shared by all requests: the job backend, counters, the open-request bound."""

    def __init__(
        self, backend: JobBackend, settings: Settings, counters: GatewayCounters | None = None
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.counters = counters or GatewayCounters()
        self.tokens = TokenCounter(settings)
        self._cancels: set[asyncio.Task[Any]] = set()

    # ---------------------------------------------------------------- admission
    async def admit(self, model: str) -> None:
        """Refuse before queueing: unknown model (404), too many open requests (429), no
        live inference worker (503). Takes one open-request slot; :meth:`release` frees it.

        The bound is checked again after the awaits and the slot taken with no await in
        between, so a burst cannot pass it (every request is checked against the count that
        includes all those admitted before it)."""
        self._refuse_when_full()
        if not await self.backend.has_model(model):
            raise unknown_model(model)
        if await self.backend.live_inference_workers() == 0:
            raise no_worker(
                "No inference worker is alive (none heartbeating within "
                f"{self.settings.heartbeat_ttl_s:g} s): start one with `arq workers.Settings`."
            )
        self._refuse_when_full()
        self.counters.open_requests += 1

    def _refuse_when_full(self) -> None:
        if self.counters.open_requests >= self.settings.gateway_max_streams:
            raise too_busy(
                f"{self.counters.open_requests} requests are open on this gateway "
                f"(SW_GATEWAY_MAX_STREAMS={self.settings.gateway_max_streams}); retry shortly"
            )

    def release(self) -> None:
        self.counters.open_requests -= 1

    async def _submit(self, model: str, task: str, inputs: list[Any], **params: Any) -> str:
        try:
            return await self.backend.submit(
                model, task, inputs, deadline_s=self.settings.gateway_timeout_s, **params
            )
        except Exception as exc:
            raise error_from_exception(exc) from exc

    async def _result(self, job_id: str) -> Any:
        try:
            return await self.backend.result(job_id, self.settings.gateway_timeout_s)
        except JobTimeoutError as exc:
            self.cancel_later(job_id)
            raise deadline(
                f"job {job_id} did not finish within SW_GATEWAY_TIMEOUT_S="
                f"{self.settings.gateway_timeout_s:g} s; it was cancelled"
            ) from exc
        except Exception as exc:
            raise error_from_exception(exc) from exc

    async def _result_unless_gone(self, job_id: str, gone: Gone | None, note: dict) -> Any:
        """The job's result; when the client goes away first, the job is cancelled and a
        499 raised (nobody reads it: it is what the access log shows)."""
        if gone is None:
            return await self._result(job_id)
        waiting = asyncio.ensure_future(self._result(job_id))
        leaving = asyncio.ensure_future(gone())
        try:
            await asyncio.wait({waiting, leaving}, return_when=asyncio.FIRST_COMPLETED)
            if waiting.done():
                return waiting.result()
            note["gone"] = True
            self.cancel_later(job_id)
            raise ApiError(CLIENT_GONE, "the client closed the request", code="client_closed")
        finally:
            for task in (waiting, leaving):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    def cancel_later(self, job_id: str) -> None:
        """Cancel a job in the background (from a cancelled task too)."""
        task = asyncio.get_running_loop().create_task(self._cancel(job_id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel(self, job_id: str) -> None:
        try:
            await self.backend.cancel(job_id)
        except Exception as exc:
            log.warning("could not cancel job %s: %s", job_id, exc)

    async def model_cards(self, names: list[str]) -> list[dict[str, Any]]:
        """``GET /v1/models`` entries, with each model's context length when it can be read."""
        locations = await self.backend.models()
        synthetic = await self.backend.synthetic_models()
        cards = []
        for name in names:
            context = None
            if name in locations:
                facts = await self.tokens.facts(name, locations[name])
                context = facts.context.context_length if facts.context is not None else None
            cards.append(responses.model_card(name, context, synthetic.get(name)))
        return cards

    async def _check_prompt(self, call: GenerateCall) -> None:
        location = (await self.backend.models()).get(call.model)
        if location:
            await check_prompt_fits(call, location, self.tokens, self.settings)

    # ---------------------------------------------------------------- embeddings
    async def embeddings(
        self, call: EmbedCall, note: dict | None = None, gone: Gone | None = None
    ) -> dict[str, Any]:
        """``POST /v1/embeddings``: one embed job for all inputs; ``usage`` counts the tokens
        that ran (after the model's truncation), as the job's details say."""
        note = {} if note is None else note
        note["model"] = call.model
        await self.admit(call.model)
        try:
            job_id = await self._submit(call.model, "embed", call.inputs, details=True)
            outputs = await self._result_unless_gone(job_id, gone, note)
        finally:
            self.release()
        if all(isinstance(o, dict) and "embedding" in o for o in outputs):
            vectors = [o["embedding"] for o in outputs]
            prompt_tokens = sum(int(o.get("tokens") or 0) for o in outputs)
        else:  # a worker without details: count with the model's tokenizer
            vectors = outputs
            location = (await self.backend.models()).get(call.model, "")
            prompt_tokens = await self.tokens.count(call.model, location, call.inputs)
        note["prompt_tokens"] = prompt_tokens
        self.counters.tokens(prompt_tokens, 0)
        return responses.embeddings(call.model, vectors, prompt_tokens, as_base64=call.base64)

    # ---------------------------------------------------------------- generation
    async def generate(
        self, call: GenerateCall, *, chat: bool, note: dict | None = None, gone: Gone | None = None
    ) -> dict[str, Any]:
        """A whole chat or text completion (``stream`` false)."""
        note = {} if note is None else note
        note["model"] = call.model
        await self.admit(call.model)
        try:
            await self._check_prompt(call)
            job_id = await self._submit(call.model, "generate", [call.prompt], **call.params)
            outputs = await self._result_unless_gone(job_id, gone, note)
        finally:
            self.release()
        total = total_usage([finish_of(o) for o in outputs])
        self._count_tokens(note, total.prompt_tokens, total.completion_tokens)
        build = responses.chat_completion if chat else responses.text_completion
        return build(job_id, call.model, outputs, total)

    def _count_tokens(self, note: dict, prompt: int, completion: int) -> None:
        note["prompt_tokens"], note["completion_tokens"] = prompt, completion
        self.counters.tokens(prompt, completion)

    async def start_stream(
        self, call: GenerateCall, *, chat: bool, note: dict | None = None
    ) -> OpenStream:
        """Admit, check and submit now (so refusals are plain HTTP errors); then the SSE
        events (an :class:`OpenStream`: iterate it, and close it in any case)."""
        note = {} if note is None else note
        note["model"] = call.model
        started = time.monotonic()
        await self.admit(call.model)
        try:
            await self._check_prompt(call)
            job_id = await self._submit(call.model, "generate", [call.prompt], **call.params)
        except BaseException:
            self.release()
            raise
        answers = int(call.params.get("n") or 1)
        plan = StreamPlan(job_id, call.model, chat, call.include_usage, started, answers)
        return OpenStream(self, plan, note)

    async def close(self) -> None:
        for task in list(self._cancels):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
        await self.backend.close()


class OpenStream:
    """The SSE events of one admitted stream (:func:`~gateway.streams.sse_events` of its
    job). :meth:`close` -- called when the events end, and by the response in any case, even
    when the client left before the first event was asked for -- releases the request's
    slot once and cancels the job unless it ended."""

    def __init__(self, gateway: Gateway, plan: StreamPlan, note: dict) -> None:
        self.gateway = gateway
        self.plan = plan
        self.note = note
        self.end = StreamEnd()
        self._events: Any = None
        self._closed = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._run()

    async def _run(self) -> AsyncIterator[bytes]:
        gateway, timeout_s = self.gateway, self.gateway.settings.gateway_timeout_s
        self._events = gateway.backend.stream(self.plan.job_id, timeout_s, self.plan.answers)
        try:
            first_token = gateway.counters.first_token
            async for data in sse_events(self.plan, self._events, timeout_s, self.end, first_token):
                yield data
        finally:
            await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        gateway, end = self.gateway, self.end
        gateway.release()
        if self._events is not None:
            with contextlib.suppress(BaseException):
                await self._events.aclose()
        if end.status != 200:
            gateway.counters.stream_error(end.status)
        if end.finish is not None:
            gateway._count_tokens(self.note, end.finish.prompt_tokens, end.finish.completion_tokens)
        if not end.finished:
            self.note.setdefault("gone", end.status == 200)
            gateway.cancel_later(self.plan.job_id)
