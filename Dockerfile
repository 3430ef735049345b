# dicom-node: one image for every node process (serve, work, retry, audit, purge-spool).
#
#   docker build -t dicom-node:cpu .                                      # CPU: PyTorch's CPU wheel
#   docker build -t dicom-node:cuda --build-arg TORCH_VARIANT=cuda .      # NVIDIA GPUs (--gpus all)
#   docker build -t dicom-node:cpu-gpl --build-arg EXTRAS=gpl-decoders .  # + the GPL-3.0 JPEG decoder
#
# Layers run from the heaviest and least often changed to the lightest: PyTorch, then the
# project's dependencies (read from pyproject.toml alone, before any source is copied), the model
# bundle, then the project itself, built as a wheel in a stage of its own so that neither its
# source tree nor a build directory stays in the image. No Debian package is added: the node runs
# no external program (DCMTK and Orthanc are test peers only). Needs BuildKit (RUN --mount).
# The Compose file, the Kubernetes manifests and the systemd units use what this file sets (user,
# ports, paths, ENV); tests/test_deploy.py checks that they agree (docs/admin.md).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY dicom_node ./dicom_node
COPY structured_reports ./structured_reports
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
# cpu: PyTorch's CPU-only wheel (about 200 MB); cuda: the registry's default Linux build, which
# carries its CUDA libraries (several GB) and needs only the NVIDIA driver on the host.
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
# Optional extras of pyproject.toml, comma-separated: "gpl-decoders" (docs/admin.md, licences).
ARG EXTRAS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
WORKDIR /opt/dicom-node

# 1. PyTorch, pinned for every later step by a constraints file (no dependency may replace it).
RUN case "${TORCH_VARIANT}" in \
      cpu) pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu ;; \
      cuda) pip install "torch==${TORCH_VERSION}" ;; \
      *) echo "TORCH_VARIANT must be cpu or cuda, not '${TORCH_VARIANT}'" >&2; exit 1 ;; \
    esac \
 && python -c "import torch; print(f'torch=={torch.__version__}')" > /opt/dicom-node/constraints.txt

# 2. The dependencies, from pyproject.toml alone: a change of the source does not reinstall them.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c 'import sys, tomllib; project = tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]; extras = [e for e in sys.argv[1].split(",") if e]; print("\n".join(project["dependencies"] + [d for e in extras for d in project["optional-dependencies"][e]]))' "${EXTRAS}" > /tmp/requirements.txt \
 && pip install --constraint /opt/dicom-node/constraints.txt --requirement /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# 3. The model bundle the node serves by default (a synthetic demo model: not for diagnostic use).
COPY models/cxr14-densenet121-demo /opt/dicom-node/models/cxr14-densenet121-demo

# 4. The project, from the wheel stage; the container's health check (standard library only).
RUN --mount=type=bind,from=wheel,source=/wheels,target=/tmp/wheels \
    pip install --no-deps /tmp/wheels/*.whl
COPY scripts/healthcheck.py /opt/dicom-node/scripts/healthcheck.py

# A dedicated user with a fixed numeric id (Kubernetes' runAsNonRoot checks the number), owning
# only its state folder: spool, and the SQLite file when no PostgreSQL is configured.
RUN groupadd --system --gid 10001 dicom-node \
 && useradd --system --uid 10001 --gid dicom-node --home-dir /var/lib/dicom-node --no-create-home \
      --shell /usr/sbin/nologin dicom-node \
 && install -d -o dicom-node -g dicom-node -m 0750 /var/lib/dicom-node /var/lib/dicom-node/spool
USER 10001:10001

LABEL org.opencontainers.image.title="dicom-node" \
      org.opencontainers.image.description="DICOM AI node for chest radiographs: C-STORE in, TID 1500 SR and Grad-CAM SC back" \
      org.opencontainers.image.licenses="Apache-2.0" \
      dicom-node.torch-variant="${TORCH_VARIANT}" \
      dicom-node.extras="${EXTRAS}"
ENV DICOM_NODE_HOST=0.0.0.0 \
    DICOM_NODE_PORT=11112 \
    DICOM_NODE_SPOOL_DIR=/var/lib/dicom-node/spool \
    DICOM_NODE_DATABASE_URL=sqlite:////var/lib/dicom-node/dicom-node.db \
    DICOM_NODE_MODEL_BUNDLE=/opt/dicom-node/models/cxr14-densenet121-demo \
    DICOM_NODE_HTTP_HOST=0.0.0.0 \
    DICOM_NODE_HTTP_PORT=8080
VOLUME /var/lib/dicom-node
EXPOSE 11112 8080
# /readyz (docs/operations.md): no torch, no association, no audit row every 30 s
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s CMD ["python", "/opt/dicom-node/scripts/healthcheck.py"]
ENTRYPOINT ["dicom-node"]
CMD ["serve"]
