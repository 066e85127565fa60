"""The chat prompts the benchmarks send (bench/engine.py all 16, bench/serving.py the first
12), one list so the two measure the same requests, and how a prompt becomes token ids."""

from typing import Any

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a hash function is.",
    "Name three primary colors.",
    "How many legs does a spider have?",
    "Give me a synonym for happy.",
    "What is 12 times 12?",
    "Translate 'good morning' into Spanish.",
    "What does a compiler do?",
    "Why is the sky blue?",
    "Suggest a name for a pet cat.",
    "What is the boiling point of water?",
    "List two uses of copper.",
    "Who wrote Romeo and Juliet?",
    "What is a prime number?",
    "Describe a rainbow in one sentence.",
]


def chat_ids(tokenizer: Any, prompt: str) -> list[int]:
    """``prompt`` as one user turn, tokenized as the engine tokenizes chat messages."""
    from sw_core.engine.tasks.chat import chat_ids as engine_chat_ids

    return engine_chat_ids(tokenizer, [{"role": "user", "content": prompt}])
