# syntax=docker/dockerfile:1
#
# speechkit-operator image.
#   docker build -t speechkit-operator:0.1.0 .
#   docker run --rm speechkit-operator:0.1.0 --help
#
# Stage 1 builds wheels of the project and of all its dependencies; stage 2 installs them into a
# virtual environment without compilers, caches or sources, and runs as an unprivileged user.

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


FROM ${PYTHON_IMAGE} AS runtime

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
