"""Submit jobs and read their results.

Example:
    >>> async with Producer("redis://127.0.0.1:6379/0") as p:  # doctest: +SKIP
    ...     job_id = await p.submit(model="minilm", task="embed", inputs=["hello world"])
    ...     vectors = await p.result(job_id, timeout_s=30)
"""

from producer.client import Producer

__all__ = ["Producer"]
