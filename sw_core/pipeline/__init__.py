"""The job pipeline's shared parts: job encoding and checks, the job store (results,
retries, dead letters), the dead-letter tools and the model registry.

Producers, workers and the command line all use these; none of them imports upward.
"""
