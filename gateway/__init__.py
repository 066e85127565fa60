"""An OpenAI-compatible HTTP gateway on top of the job pipeline (``sw serve``).

Sits above :mod:`producer`: every request becomes jobs on ``sw:jobs``. Nothing in the
library, the producer or the workers imports it.
"""
