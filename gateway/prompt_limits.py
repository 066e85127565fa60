"""A prompt too long for the model is refused with a 400 before it is queued.

The gateway knows the input limit (the model's context length from its ``config.json`` --
its positions and the KV cache ``SW_MAX_KV_CACHE_MB`` allows one sequence, see
:mod:`sw_core.context` -- and ``SW_MAX_INPUT_TOKENS`` when set) and has the model's tokenizer, so a prompt the engine would refuse
never becomes a job (which would dead-letter as a ``ModelError`` and count as a cluster
error). A completion's prompt is counted exactly, as the engine tokenizes it; a chat is
counted without its template (which only adds tokens), so only a chat that is surely too
long is refused here -- the engine still judges the rest.
"""

from __future__ import annotations

from gateway.errors import bad_request
from gateway.requests import GenerateCall
from gateway.tokens import ModelFacts, TokenCounter
from sw_core.settings import Settings


async def check_prompt_fits(
    call: GenerateCall, location: str, counter: TokenCounter, settings: Settings
) -> None:
    """Raise a 400 when ``call``'s prompt is over the input limit, or the prompt plus
    ``max_tokens`` over the model's positions.

    Raises:
        ApiError: 400 with ``code`` ``context_length_exceeded`` (as OpenAI's).
    """
    facts = await counter.facts(call.model, location)
    if facts.tokenizer is None:
        return
    if isinstance(call.prompt, str):
        [tokens] = await counter.lengths(call.model, location, [call.prompt], special=True)
        at_least, param = "", "prompt"
    else:
        texts = [m["content"] for m in call.prompt]
        # each message's text alone can tokenize one token shorter at its start (a word's
        # leading-space form): the bound stays below what the template gives
        lengths = await counter.lengths(call.model, location, texts, special=False)
        tokens = max(0, sum(lengths) - len(lengths))
        at_least, param = "at least ", "messages"
    limit, where = input_limit(facts, settings)
    if limit is not None and tokens > limit:
        raise too_long(
            f"the prompt has {at_least}{tokens} tokens; model {call.model!r} accepts at most "
            f"{limit} ({where}): shorten it",
            param,
        )
    wanted = call.params.get("max_new_tokens")
    context = facts.context.context_length if facts.context is not None else None
    if wanted is None or wanted > settings.max_new_tokens_limit:
        return  # over SW_MAX_NEW_TOKENS_LIMIT: the job checks say so, by that name
    if context is not None and tokens + wanted > context:
        raise too_long(
            f"the prompt has {at_least}{tokens} tokens and max_tokens is {wanted}: more than "
            f"the context length of model {call.model!r}, {context} tokens "
            f"({facts.context.bound_by() if facts.context else ''}); shorten the prompt or "
            "lower max_tokens",
            param,
        )


def input_limit(facts: ModelFacts, settings: Settings) -> tuple[int | None, str]:
    """The longest prompt (tokens) and what sets it (None: no limit known)."""
    context = facts.context
    limit = context.context_length if context is not None else facts.max_positions
    where = context.bound_by() if context is not None else "the model's positions"
    if settings.max_input_tokens and (limit is None or settings.max_input_tokens < limit):
        limit, where = settings.max_input_tokens, "SW_MAX_INPUT_TOKENS"
    return limit, where


def too_long(message: str, param: str) -> Exception:
    return bad_request(message, code="context_length_exceeded", param=param)
