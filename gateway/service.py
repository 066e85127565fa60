"""The gateway's request handling, independent of the web framework: checks, jobs, answers.

:class:`Gateway` turns one parsed OpenAI request into a job on ``sw:jobs`` and its result
into OpenAI's response (or an SSE stream of chunks). Before anything is queued it checks the
model (404), the open-request bound (429) and that an inference worker is alive (503).
A stream whose client goes away cancels its job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from gateway import responses
from gateway.errors import deadline, error_from_exception, no_worker, too_busy, unknown_model
from gateway.jobs import Delta, Finish, JobBackend, finish_of
from gateway.requests import EmbedCall, GenerateCall
from gateway.status import GatewayCounters
from gateway.tokens import TokenCounter
from sw_core.exceptions import JobTimeoutError
from sw_core.settings import Settings

log = logging.getLogger(__name__)
#: Seconds without an event after which a stream gets a keep-alive comment line.
KEEPALIVE_S = 15.0


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
        live inference worker (503). Takes one open-request slot; :meth:`release` frees it."""
        if not await self.backend.has_model(model):
            raise unknown_model(model)
        if self.counters.open_requests >= self.settings.gateway_max_streams:
            raise too_busy(
                f"{self.counters.open_requests} requests are open on this gateway "
                f"(SW_GATEWAY_MAX_STREAMS={self.settings.gateway_max_streams}); retry shortly"
            )
        if await self.backend.live_inference_workers() == 0:
            raise no_worker(
                "No inference worker is alive (none heartbeating within "
                f"{self.settings.heartbeat_ttl_s:g} s): start one with `arq workers.Settings`."
            )
        self.counters.open_requests += 1

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

    def cancel_later(self, job_id: str) -> None:
        """Cancel a job in the background (from a cancelled task too)."""
        if not self.backend.can_cancel:
            return
        task = asyncio.get_running_loop().create_task(self._cancel(job_id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _cancel(self, job_id: str) -> None:
        try:
            await self.backend.cancel(job_id)
        except Exception as exc:
            log.warning("could not cancel job %s: %s", job_id, exc)

    # ---------------------------------------------------------------- embeddings
    async def embeddings(self, call: EmbedCall) -> dict[str, Any]:
        """``POST /v1/embeddings``: one embed job for all inputs."""
        await self.admit(call.model)
        try:
            job_id = await self._submit(call.model, "embed", call.inputs)
            vectors = await self._result(job_id)
            location = (await self.backend.models()).get(call.model, "")
            prompt_tokens = await self.tokens.count(call.model, location, call.inputs)
        finally:
            self.release()
        return responses.embeddings(call.model, vectors, prompt_tokens, as_base64=call.base64)

    # ---------------------------------------------------------------- generation
    async def generate(self, call: GenerateCall, *, chat: bool) -> dict[str, Any]:
        """A whole chat or text completion (``stream`` false)."""
        await self.admit(call.model)
        try:
            job_id = await self._submit(call.model, "generate", [call.prompt], **call.params)
            output = (await self._result(job_id))[0]
        finally:
            self.release()
        text, finish = output.get("text") or "", finish_of(output)
        build = responses.chat_completion if chat else responses.text_completion
        return build(job_id, call.model, text, finish)

    async def start_stream(self, call: GenerateCall, *, chat: bool) -> AsyncIterator[bytes]:
        """Admit and submit now (so refusals are plain HTTP errors); then the SSE events."""
        await self.admit(call.model)
        try:
            job_id = await self._submit(call.model, "generate", [call.prompt], **call.params)
        except BaseException:
            self.release()
            raise
        return self._events(job_id, call.model, chat=chat)

    async def _events(self, job_id: str, model: str, *, chat: bool) -> AsyncIterator[bytes]:
        """OpenAI chunks fed by the job's stream, then ``[DONE]``; an error after the stream
        began is sent as an error event; a comment line every :data:`KEEPALIVE_S` while
        nothing comes keeps proxies from closing the connection. A client that goes away
        (or a stream past its deadline) cancels the job."""
        ended = False
        events = self.backend.stream(job_id, self.settings.gateway_timeout_s)
        try:
            if chat:
                yield responses.sse(responses.chunk(job_id, model, chat=True, text="", first=True))
            async for event in _with_keepalive(events, self.settings.gateway_timeout_s):
                if event is None:
                    yield responses.KEEPALIVE
                elif isinstance(event, Delta):
                    yield responses.sse(responses.chunk(job_id, model, chat=chat, text=event.text))
                else:
                    yield responses.sse(responses.chunk(job_id, model, chat=chat, finish=event))
            ended = True
            yield responses.DONE
        except (TimeoutError, JobTimeoutError):
            self.counters.count("stream errors", 504)
            message = f"SW_GATEWAY_TIMEOUT_S={self.settings.gateway_timeout_s:g} s passed"
            yield deadline(f"job {job_id} did not finish in time: {message}").sse()
            yield responses.DONE
        except Exception as exc:
            error = error_from_exception(exc)
            self.counters.count("stream errors", error.status)
            ended = True  # the job failed: nothing left to cancel
            yield error.sse()
            yield responses.DONE
        finally:
            self.release()
            with contextlib.suppress(BaseException):
                await events.aclose()
            if not ended:
                self.cancel_later(job_id)

    async def close(self) -> None:
        for task in list(self._cancels):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
        await self.backend.close()


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
