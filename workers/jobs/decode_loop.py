"""Continuous batching in the worker: one decode loop per model.

The consumer hands started ``generate`` jobs to :class:`DecodeLoops` and goes back to
reading the stream. Each model's :class:`DecodeLoop` runs steps of its
:class:`~sw_core.engine.tasks.continuous.DecodeSession` back to back; between two steps it

- ends jobs whose cancel was requested or whose deadline passed (status ``cancelled`` /
  ``expired``, see :class:`~sw_core.pipeline.lifecycle.JobEnds`);
- lets waiting jobs join, up to ``max_active_sequences`` sequences and the KV-cache budget
  (their prompts run in the next step, in the same sweep over the weights);
- streams each new token to the job's token stream, and writes a job's result the moment
  its last sequence finishes (then frees its place at once). Text that could be the
  beginning of one of a sequence's ``stop`` sequences is held back until the next tokens
  tell (see :class:`~workers.jobs.token_stream.TextDeltas`), so the deltas never carry any part
  of a stop sequence and add up to the result's text; such a sequence ends with finish
  reason ``stop``.

A step that fails (a chunk that cannot be loaded) fails its jobs like a failed batch:
retried with backoff or dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from sw_core.exceptions import ModelError, is_transient
from sw_core.pipeline.jobs import Job
from sw_core.pipeline.lifecycle import JobEnds, past_deadline
from sw_core.schema import JobStatus, StreamEvent
from sw_core.settings import Settings
from workers.jobs.handlers import DecodingHandler
from workers.jobs.outcomes import JobOutcomes
from workers.jobs.token_stream import TextDeltas, TokenStreams

if TYPE_CHECKING:  # the engine imports torch; the consumer imports this module always
    from sw_core.engine.tasks.continuous import DecodeSession, Sequence

log = logging.getLogger(__name__)


def _key(job_id: str, base: int, j: int) -> tuple[str, int]:
    """A sequence's key: its job and its index among the job's answers."""
    return job_id, base + j


@dataclass
class _Running:
    """A job in a decode loop: its sequences (one per input) and their text so far."""

    job: Job
    seqs: list[Sequence] = field(default_factory=list)
    deltas: list[TextDeltas] = field(default_factory=list)
    #: Per sequence, how many of its ``logprobs`` entries were streamed.
    logprobs_sent: list[int] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return bool(self.seqs) and all(s.finish_reason is not None for s in self.seqs)


class DecodeLoop:
    """The decode loop of one model in one worker."""

    def __init__(self, model: str, session: DecodeSession, owner: DecodeLoops) -> None:
        self.model = model
        self.session = session
        self.owner = owner
        self.waiting: list[Job] = []
        self.running: dict[str, _Running] = {}
        self.task: asyncio.Task[None] | None = None

    @property
    def sequences(self) -> int:
        """Sequences running or waiting to join."""
        return self.session.active + sum(len(j.inputs) for j in self.waiting)

    def add(self, jobs: list[Job]) -> None:
        self.waiting.extend(jobs)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name=f"decode-{self.model}")

    async def _run(self) -> None:
        while self.waiting or self.running:
            try:
                await self._stop_ended()
                joining = await self._admit()
                if not joining and not self.session.active:
                    # only running jobs without a sequence left: a bug, fail them (retried)
                    await self._fail_all(ModelError("the decode loop lost track of its jobs"))
                    continue
                try:
                    report = await self.session.step_async(joining)
                except Exception as exc:
                    await self._fail_all(exc)
                    continue
                await self._publish(report.step, report.tokens)
                await self.owner.after_step(self.model)
            except Exception as exc:  # Redis away, or a bug: the jobs must not be lost
                log.exception("decode loop of %s failed", self.model)
                failure = exc if is_transient(exc) else ModelError(f"the decode loop failed: {exc}")
                await self._fail_all(failure)
                await asyncio.sleep(0.5)

    # ---------------------------------------------------------------- between steps
    async def _stop_ended(self) -> None:
        jobs = [r.job for r in self.running.values()] + self.waiting
        if not jobs:
            return
        flags = await self.owner.ends.cancel_requested(jobs)
        for job, cancel in zip(jobs, flags, strict=True):
            if cancel or past_deadline(job):
                await self._end(job, JobStatus.CANCELLED if cancel else JobStatus.EXPIRED)

    async def _end(self, job: Job, status: JobStatus) -> None:
        state = self.running.pop(job.job_id, None)
        if state is not None:
            self.session.drop({s.key for s in state.seqs})
        self.waiting = [j for j in self.waiting if j.job_id != job.job_id]
        if await self.owner.ends.end(job, status):
            log.info("job %s %s while generating", job.job_id, status)
        await self.owner.streams.write(
            [(job.job_id, {"type": StreamEvent.FINAL, "status": status})]
        )
        self.owner.release(job)

    async def _admit(self) -> list[Sequence]:
        """Parse waiting jobs into sequences while they fit the caps (FIFO)."""
        joining: list[Sequence] = []
        cap = self.owner.settings.max_active_sequences
        events: list[tuple[str, dict[str, Any]]] = []
        while self.waiting:
            job = self.waiting[0]
            try:
                requests = await self.owner.handler.sequence_requests(self.model, job)
                seqs: list[Sequence] = []  # n per input, input-major: index = input * n + j
                for req in requests:
                    seqs += self.session.parse_all(req, partial(_key, job.job_id, len(seqs)))
            except Exception as exc:  # a bad job (or a bug parsing it) fails that job only
                self.waiting.pop(0)
                if not isinstance(exc, ModelError):
                    log.exception("job %s could not join the decode batch", job.job_id)
                    exc = ModelError(f"the job could not join the decode batch: {exc}")
                await self.owner.outcomes.failed(job, exc)
                self.owner.release(job)
                continue
            empty = not self.session.active and not joining
            too_many = self.session.active + len(joining) + len(seqs) > cap
            if not empty and (too_many or not self.session.fits([*joining, *seqs])):
                break
            self.waiting.pop(0)
            joining += seqs
            deltas = [TextDeltas(self.session.decode, s.request.params.stop) for s in seqs]
            self.running[job.job_id] = _Running(job, seqs, deltas, [0] * len(seqs))
            events.append(
                (
                    job.job_id,
                    {
                        "type": StreamEvent.START,
                        "attempt": job.attempt,
                        "deliveries": job.deliveries,
                        "inputs": len(seqs),
                    },
                )
            )
        await self.owner.streams.write(events)
        return joining

    async def _publish(self, step: int, tokens: dict[Any, int]) -> None:
        """Token deltas and end events of this step; results of the jobs that finished."""
        events: list[tuple[str, dict[str, Any]]] = []
        finished: list[_Running] = []
        for (job_id, index), _token in tokens.items():
            state = self.running.get(job_id)
            if state is None:
                continue
            seq = state.seqs[index]
            ended = seq.finish_reason is not None
            delta = state.deltas[index].next(seq.text_ids, final=ended, end=seq.stop_at)
            event: dict[str, Any] = {"type": StreamEvent.TOKEN, "index": index, "text": delta}
            if seq.request.params.logprobs and (delta or ended):
                # the entries of the tokens this text came from (a partial character's
                # tokens wait for the rest); added up, the result's ``logprobs``
                sent = state.logprobs_sent[index]
                entries = self.session.logprob_entries(seq, sent)
                state.logprobs_sent[index] = sent + len(entries)
                if entries:
                    event["logprobs"] = json.dumps(entries, separators=(",", ":"))
            if delta or "logprobs" in event:
                events.append((job_id, {**event, "step": step}))
            if ended:
                events.append(
                    (
                        job_id,
                        {
                            "type": StreamEvent.END,
                            "index": index,
                            "finish_reason": seq.finish_reason,
                            "prompt_tokens": len(seq.request.ids),
                            "completion_tokens": len(seq.tokens),
                            "joined_step": seq.joined_step,
                            "step": step,
                        },
                    )
                )
            if state.done and state not in finished:
                finished.append(state)
        await self.owner.streams.write(events)
        for state in finished:
            del self.running[state.job.job_id]
            result = [self.session.result(s) for s in state.seqs]
            await self.owner.outcomes.finish([state.job], [result])
            final = {
                "type": StreamEvent.FINAL,
                "status": JobStatus.DONE,
                "finish_reason": ",".join(str(s.finish_reason) for s in state.seqs),
                # a prompt with n completions ran (and counts) once
                "prompt_tokens": sum(
                    len(s.request.ids) for s in state.seqs if not s.request.completion
                ),
                "completion_tokens": sum(len(s.tokens) for s in state.seqs),
            }
            await self.owner.streams.write([(state.job.job_id, final)])
            self.owner.release(state.job)

    async def _fail_all(self, exc: BaseException) -> None:
        """A failed step: every running job fails with ``exc`` (retried or dead-lettered)."""
        self.session.reset()
        states, self.running = list(self.running.values()), {}
        for state in states:
            await self.owner.outcomes.failed(state.job, exc)
            self.owner.release(state.job)


class DecodeLoops:
    """The decode loops of one worker, one per model (see the module docstring).

    Args:
        handler: the worker's handler (:class:`~workers.jobs.handlers.DecodingHandler`).
        release: called once per job when the loop is done with it.
    """

    def __init__(
        self,
        handler: DecodingHandler,
        settings: Settings,
        outcomes: JobOutcomes,
        ends: JobEnds,
        streams: TokenStreams,
        release: Callable[[Job], None],
    ) -> None:
        self.handler = handler
        self.settings = settings
        self.outcomes = outcomes
        self.ends = ends
        self.streams = streams
        self.release = release
        self.loops: dict[str, DecodeLoop] = {}

    async def accepts(self, model: str) -> bool:
        """Whether ``model``'s generate jobs go to a decode loop (decoder-only models)."""
        if model in self.loops:
            return True
        session = await self.handler.decode_session(model)
        if session is None:
            return False
        self.loops[model] = DecodeLoop(model, session, self)
        return True

    def room(self, model: str) -> int:
        """How many more sequences ``model``'s loop takes now."""
        loop = self.loops.get(model)
        used = loop.sequences if loop is not None else 0
        return max(0, self.settings.max_active_sequences - used)

    def add(self, model: str, jobs: list[Job]) -> None:
        """Hand started jobs to ``model``'s loop (after :meth:`accepts`)."""
        self.loops[model].add(jobs)

    async def after_step(self, model: str) -> None:
        await self.handler.after_step(model)

    @property
    def busy(self) -> bool:
        return any(loop.task is not None and not loop.task.done() for loop in self.loops.values())

    async def drain(self, timeout_s: float) -> bool:
        """Wait until every loop finished its jobs; False when ``timeout_s`` ran out."""
        tasks = [loop.task for loop in self.loops.values() if loop.task and not loop.task.done()]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=max(timeout_s, 0))
        return not pending

    async def cancel(self) -> None:
        """Stop every loop now (its jobs stay with the consumer, to be handed back)."""
        for loop in self.loops.values():
            if loop.task is not None and not loop.task.done():
                loop.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await loop.task
