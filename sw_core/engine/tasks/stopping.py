"""Stop sequences: where one begins in a row's text, and what a stream must hold back.

A row's text is the decode of its generated tokens (special tokens skipped), the same text
its result carries. The row ends at the first token after which that text contains a stop
sequence (a longer one that began earlier but is not complete yet is not waited for); its
text is then cut right before the earliest occurrence, while its token ids keep every token
up to and including the one that completed the stop sequence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest of ``stops`` begins in ``text``; None when none occurs."""
    found = [i for i in (text.find(stop) for stop in stops) if i >= 0]
    return min(found) if found else None


def stop_in(
    decode: Callable[[list[int]], str], tokens: list[int], stops: Sequence[str]
) -> int | None:
    """:func:`first_stop` in the text of ``tokens`` (no decoding without ``stops``)."""
    return first_stop(decode(tokens), stops) if stops else None


def pending_stop(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of ``text`` that is the beginning (not the whole) of a stop
    sequence: text a stream holds back until the next tokens tell whether the stop follows."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
