# crdtstore: one region node per container (see k8s/ for the Kubernetes manifests).
#   docker build -t crdtstore:0.1.0 .
# The first stage builds a virtualenv with the package installed from this repository; the second
# copies it onto a clean base, so no compiler, pip cache or source tree ships.
FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY crdtstore ./crdtstore
COPY sync ./sync
COPY demo_app ./demo_app
RUN python -m venv /opt/crdtstore && /opt/crdtstore/bin/pip install .

FROM python:3.11-slim-bookworm
# uid/gid 10001: not root and above the host's system ids; the StatefulSet runs as the same ids.
RUN groupadd --system --gid 10001 crdtstore \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin crdtstore \
    && mkdir -p /var/lib/crdtstore \
    && chown 10001:10001 /var/lib/crdtstore
COPY --from=build /opt/crdtstore /opt/crdtstore
# Bytecode was compiled at install; never write it at run time (the root filesystem is read-only).
ENV PATH=/opt/crdtstore/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Everything the node writes is under the data directory, on the volume.
WORKDIR /var/lib/crdtstore
VOLUME ["/var/lib/crdtstore"]
USER 10001:10001
EXPOSE 8080 9443
# checkov:skip=CKV_DOCKER_2: Kubernetes probes /readyz and /healthz itself (k8s/base/statefulset.yaml); a HEALTHCHECK would go unused
ENTRYPOINT ["crdtstore"]
CMD ["serve", "--host", "0.0.0.0", "--data", "/var/lib/crdtstore/data"]
