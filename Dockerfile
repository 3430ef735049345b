# dicom-node: one image for the node (serve / work / retry). Build: docker build -t dicom-node .
# The same commands run here (scripts/setup.sh's pip steps, `dicom-node serve`) are exercised by
# the test suite. For NVIDIA GPUs, run with `--gpus all`: torch==2.13.0 from the registry is the
# CUDA build, and `device = "auto"` picks the GPU.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends dcmtk \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/dicom-node
COPY pyproject.toml README.md alembic.ini ./
COPY dicom_node ./dicom_node
COPY structured_reports ./structured_reports
COPY models ./models
COPY config ./config
COPY scripts/healthcheck.py ./scripts/healthcheck.py
RUN pip install --no-cache-dir torch==2.13.0 \
 && pip install --no-cache-dir .

RUN useradd --system --home /var/lib/dicom-node dicom-node \
 && mkdir -p /var/lib/dicom-node && chown dicom-node /var/lib/dicom-node
USER dicom-node
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
HEALTHCHECK --interval=30s --timeout=10s CMD ["python", "/opt/dicom-node/scripts/healthcheck.py"]
ENTRYPOINT ["dicom-node"]
CMD ["serve"]
