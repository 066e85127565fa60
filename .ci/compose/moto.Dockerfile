# CI's S3 stand-in: moto's S3 server (no MinIO server can be had where CI runs). Built on
# CI's Debian base image from its wheelhouse, like the project's image.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
ARG PIP_ARGS=
RUN python3 -m venv /opt/moto \
 && /opt/moto/bin/pip install --no-cache-dir --disable-pip-version-check $PIP_ARGS 'moto[server]' \
 && useradd --uid 10002 moto
USER moto
CMD ["/opt/moto/bin/moto_server", "--help"]
