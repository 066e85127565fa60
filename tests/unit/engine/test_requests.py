"""Request validation: bad input is a ModelError that says what to fix."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from sw_core.engine.tasks.requests import Limits, RequestParser, pad
from sw_core.exceptions import ModelError


class WordTokenizer:
    """A stand-in tokenizer: one id per word (its length), with a chat template."""

    chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [len(word) for word in text.split()]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        turns = " ".join(f"<{m['role']}> {m['content']}" for m in messages)
        return f"{turns} <assistant>"


LIMITS = Limits("tiny", vocab_size=100, max_input_tokens=8, max_new_tokens=16, max_positions=12)


def _parser(tokenizer: Any = None, *, head: bool = True, seq2seq: bool = False) -> RequestParser:
    return RequestParser(LIMITS, tokenizer or WordTokenizer(), has_lm_head=head, seq2seq=seq2seq)


@pytest.mark.parametrize(
    ("task", "request_", "message"),
    [
        ("embed", "hello", "must be a dict"),
        ("embed", {"text": ""}, "'text' is empty"),
        ("embed", {"text": "   "}, "'text' is empty"),
        ("embed", {"text": 42}, "'text' must be a string"),
        ("embed", {}, "exactly one of"),
        ("embed", {"text": "a", "input_ids": [1]}, "exactly one of"),
        ("embed", {"text": "a", "colour": 1}, r"unknown field\(s\) \['colour'\]"),
        ("embed", {"input_ids": []}, "non-empty list"),
        ("embed", {"input_ids": [1, 2.5]}, "integers only"),
        ("embed", {"input_ids": [1, True]}, "integers only"),
        ("embed", {"input_ids": [1, 100]}, r"token id 100 outside the vocabulary \[0, 100\)"),
        ("embed", {"input_ids": [-1]}, "outside the vocabulary"),
        ("embed", {"input_ids": list(range(9))}, "input has 9 tokens; .* at most 8"),
        ("embed", {"text": "a b c d e f g h i j"}, "input has 11 tokens"),
        ("embed", {"text": "a", "normalize": "yes"}, "'normalize' must be true or false"),
        ("forward", {"input_ids": [1], "output": "probs"}, "'output' must be"),
        ("forward", {"input_ids": [1], "positions": "first"}, "'positions' must be"),
        ("forward", {"input_ids": [1], "decoder_input_ids": [1]}, "encoder-decoder"),
        ("generate", {"text": "hi", "max_new_tokens": 0}, "from 1 to 16"),
        ("generate", {"text": "hi", "max_new_tokens": 17}, "SW_MAX_NEW_TOKENS_LIMIT"),
        ("generate", {"text": "hi", "max_new_tokens": True}, "'max_new_tokens' must be"),
        ("generate", {"input_ids": [1] * 8, "max_new_tokens": 5}, "exceeds the 12 positions"),
        ("generate", {"text": "hi", "temperature": -1}, "'temperature' must be"),
        ("generate", {"text": "hi", "temperature": float("nan")}, "'temperature' must be"),
        ("generate", {"text": "hi", "top_p": 0}, "'top_p' must be"),
        ("generate", {"text": "hi", "top_k": -3}, "'top_k' must be"),
        ("generate", {"text": "hi", "seed": "7"}, "'seed' must be an integer"),
        ("generate", {"text": "hi", "stop": 5}, "'stop' must be a string or a list of up to 4"),
        ("generate", {"text": "hi", "stop": {"a": 1}}, "'stop' must be a string or a list"),
        ("generate", {"text": "hi", "stop": ["a", 3]}, "'stop' must hold strings only, got int"),
        ("generate", {"text": "hi", "stop": [None]}, "'stop' must hold strings only"),
        ("generate", {"text": "hi", "stop": ""}, "'stop' holds an empty string"),
        ("generate", {"text": "hi", "stop": ["a", ""]}, "'stop' holds an empty string"),
        ("generate", {"text": "hi", "stop": list("abcde")}, "'stop' holds 5 strings; at most 4"),
        ("generate", {"text": "hi", "stop": ["x" * 257]}, "257 characters; at most 256"),
        ("generate", {"text": "hi", "repetition_penalty": 0}, "'repetition_penalty' must be"),
        ("generate", {"text": "hi", "repetition_penalty": -1.2}, "'repetition_penalty' must"),
        ("generate", {"text": "hi", "repetition_penalty": float("nan")}, "'repetition_penalty'"),
        ("generate", {"text": "hi", "repetition_penalty": float("inf")}, "'repetition_penalty'"),
        ("generate", {"text": "hi", "repetition_penalty": "1.2"}, "'repetition_penalty'"),
        ("generate", {"text": "hi", "repetition_penalty": True}, "'repetition_penalty'"),
        ("generate", {"messages": []}, "'messages' must be a non-empty list"),
        ("generate", {"messages": [{"role": "user"}]}, "string 'role' and 'content'"),
        ("generate", {"messages": [{"role": "user", "content": " "}]}, "hold no text"),
    ],
)
def test_bad_requests_raise_model_error(task: str, request_: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        getattr(_parser(), task)(request_)


def test_text_without_a_tokenizer_asks_for_input_ids() -> None:
    parser = RequestParser(LIMITS, None, has_lm_head=True, seq2seq=False)
    with pytest.raises(ModelError, match="ships no tokenizer; pass 'input_ids'"):
        parser.embed({"text": "hello"})
    assert parser.embed({"input_ids": [3, 4]}).ids == [3, 4]


def test_stop_sequences_need_a_tokenizer() -> None:
    parser = RequestParser(LIMITS, None, has_lm_head=True, seq2seq=False)
    with pytest.raises(ModelError, match=r"ships no tokenizer, so .* 'stop' sequences"):
        parser.generate({"input_ids": [3, 4], "stop": "\n"})
    assert parser.generate({"input_ids": [3, 4], "stop": None}).params.stop == ()
    assert parser.generate({"input_ids": [3, 4], "stop": []}).params.stop == ()


def test_stop_and_repetition_penalty_parse() -> None:
    parser = _parser()
    plain = parser.generate({"text": "hi"})
    assert plain.params.stop == () and plain.params.repetition_penalty == 1.0
    one = parser.generate({"text": "hi", "stop": "\n\n", "repetition_penalty": 2})
    assert one.params.stop == ("\n\n",) and one.params.repetition_penalty == 2.0
    longest = ["a", "bb", " c", "x" * 256]
    assert parser.generate({"text": "hi", "stop": longest}).params.stop == tuple(longest)
    assert (
        parser.generate({"text": "hi", "repetition_penalty": 0.5}).params.repetition_penalty == 0.5
    )


def test_models_without_a_head_refuse_logits_and_generation() -> None:
    parser = _parser(head=False)
    assert parser.forward({"input_ids": [1]}).output == "hidden"
    with pytest.raises(ModelError, match="no LM head, so no logits"):
        parser.forward({"input_ids": [1], "output": "logits"})
    with pytest.raises(ModelError, match="cannot generate"):
        parser.generate({"text": "hi"})


def test_good_requests_parse() -> None:
    parser = _parser()
    assert parser.embed({"text": "ab abc", "model": "tiny"}).ids == [1, 2, 3]
    fwd = parser.forward({"input_ids": torch.tensor([5, 6]), "positions": "last"})
    assert fwd.ids == [5, 6] and fwd.last_only and fwd.output == "logits"
    gen = parser.generate({"text": "hi there", "temperature": 0.7, "seed": 3, "top_p": 0.9})
    # chat template applied, no special tokens added twice: "<user> hi there <assistant>"
    assert gen.ids == [6, 2, 5, 11]
    # default max_new_tokens: what the 12 positions leave after the 4-token prompt
    assert (
        gen.params.sampling_temperature,
        gen.params.seed,
        gen.params.top_p,
        gen.max_new_tokens,
    ) == (
        0.7,
        3,
        0.9,
        8,
    )
    plain = parser.generate({"text": "hi there", "chat": False})
    assert plain.ids == [1, 2, 5]
    t5 = _parser(seq2seq=True).forward({"input_ids": [1], "decoder_input_ids": [0, 4]})
    assert t5.decoder_ids == [0, 4]


def test_padding_left_and_right() -> None:
    ids, mask = pad([[5, 6, 7], [8]], 0, left=True, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad([[5, 6, 7], [8]], 9, left=False, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [8, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
