# syntax=docker/dockerfile:1
# mlsec-operator image: `docker build -t mlsec-operator:0.1.0 .` (e2e/kind/run.sh does this).
# Builder: the project and its dependencies installed into a virtualenv (wheels only; no compiler
# is needed, so none is installed). Final: the same slim Python with that virtualenv, nothing else.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/mlsec
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN /opt/mlsec/bin/pip install --upgrade pip wheel \
 && /opt/mlsec/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/mlsec/bin/pip install /wheels/*.whl \
 && /opt/mlsec/bin/pip uninstall --yes pip wheel \
 && /opt/mlsec/bin/python -m compileall -q /opt/mlsec \
 && /opt/mlsec/bin/mlsec run --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="mlsec-operator" \
      org.opencontainers.image.description="Kubernetes operator enforcing security policy for ML platforms" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/mlsec/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=builder /opt/mlsec /opt/mlsec
# The distroless "nonroot" ids; the chart runs the pod as this user with a read-only root filesystem.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8080 8081 9443
ENTRYPOINT ["mlsec", "run"]
