"""Static batching that streams: the baseline ``bench/serving.py`` compares time to first
token against.

The worker's static batches (``SW_GENERATE_BATCHING=static``) write no token stream, so a
client sees its first token only with the result; comparing that with the first streamed
token of continuous batching would mix streaming with batching. This is the worker's own
decode loop (:mod:`workers.jobs.decode_loop`: the same engine steps, the same token stream) with
one change: waiting jobs join only when the running batch has ended -- static batching.
"""

from __future__ import annotations

from workers.jobs.decode_loop import DecodeLoop, DecodeLoops


class StaticDecodeLoop(DecodeLoop):
    """A decode loop whose batch, once running, takes no new job until it has ended."""

    async def _admit(self) -> list:  # type: ignore[type-arg]
        if self.session.active:
            return []
        return await super()._admit()


class StaticDecodeLoops(DecodeLoops):
    """The decode loops of one worker, each a :class:`StaticDecodeLoop`; install with
    ``consumer.loops = StaticDecodeLoops.like(consumer.loops)`` before starting it."""

    @classmethod
    def like(cls, loops: DecodeLoops | None) -> StaticDecodeLoops:
        """Static loops wired as the consumer's continuous ``loops`` are."""
        if loops is None:
            raise ValueError("the consumer has no decode loops (SW_GENERATE_BATCHING=static?)")
        return cls(
            loops.handler, loops.settings, loops.outcomes, loops.ends, loops.streams, loops.release
        )

    async def accepts(self, model: str) -> bool:
        if model not in self.loops:
            session = await self.handler.decode_session(model)
            if session is None:
                return False
            self.loops[model] = StaticDecodeLoop(model, session, self)
        return True
