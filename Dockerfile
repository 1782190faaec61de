# The serving image: TorchServe 0.12 with the pinned torch that traced the model.
#
# Build with `make image` (scripts/build_image.sh): it makes the base locally with
# debootstrap (Debian bookworm, whose python3 is 3.11) and downloads the serving wheels
# (requirements-serve.txt) on the host into build/wheels, so the build pulls no image from
# a registry and installs no Python package over the network. The pinned torch is the CUDA
# build: the same image serves on a GPU node with the NVIDIA container toolkit.
#   BASE_IMAGE   another base with the same layout (e.g. a CUDA runtime image on Debian 12)
#
# Run (`make image-test` does this and checks the answers):
#   podman run -d -p 127.0.0.1:8080-8083:8080-8083 --name wm watermark-serve
#   podman exec wm cat /home/model-server/key_file.json        # the keys (renewed by the keeper)
#   curl http://127.0.0.1:8083/ready                            # keyless probe (/live too)
# The archive is baked in at /home/model-server/model-store; mount a model store over that
# path (-v store:/home/model-server/model-store:ro), or elsewhere with MODEL_STORE=PATH
# (KServe's storageUri: /mnt/models), to serve another version without a rebuild.
# SIGTERM drains first (readiness 503, in-flight requests answered; DRAIN_MIN_S,
# DRAIN_TIMEOUT_S), then stops TorchServe; see scripts/container_entry.sh.
ARG BASE_IMAGE=localhost/watermark-base:bookworm
FROM ${BASE_IMAGE}

# Java 17 for the TorchServe frontend, Python 3.11 for the workers; nothing else.
# hadolint ignore=DL3008
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        python3 python3-venv openjdk-17-jre-headless \
    && rm -rf /var/lib/apt/lists/*

# The wheels are bound in for these steps only, so they add no layer of their own. The
# install is split into four layers of at most 1.9 GB (CUDA libraries in two, triton, then
# torch and the rest): committing a layer briefly takes several times its size on disk, so
# one 6 GB layer needed 21 GB free and four small ones need about 12 GB.
RUN --mount=type=bind,source=build/wheels,target=/wheels \
    python3 -m venv /opt/venv \
    && sh /wheels/install_wheels.sh 'nvidia_cudnn*' 'nvidia_nccl*' 'nvidia_cusparselt*' 'nvidia_nvshmem*'
# hadolint ignore=DL3059
RUN --mount=type=bind,source=build/wheels,target=/wheels \
    sh /wheels/install_wheels.sh 'nvidia_*'
# hadolint ignore=DL3059
RUN --mount=type=bind,source=build/wheels,target=/wheels \
    sh /wheels/install_wheels.sh 'triton-*' 'cuda_*'
# hadolint ignore=DL3059
RUN --mount=type=bind,source=build/wheels,target=/wheels \
    /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels -r /wheels/requirements-serve.txt

# A numeric, non-root user (Kubernetes runAsNonRoot accepts it).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/model-server model-server
WORKDIR /home/model-server

COPY --chown=10001:10001 config.properties metrics.yaml /home/model-server/
COPY --chown=10001:10001 scripts/keykeeper.py scripts/manage_models.py scripts/container_entry.sh /home/model-server/scripts/
# The archive: model_store/watermark.mar or build_image.sh --mar FILE, staged by the script.
COPY --chown=10001:10001 build/image/watermark.mar /home/model-server/model-store/watermark.mar

# Container-only config changes; everything else stays as in the repository's file. Inside
# a container 127.0.0.1 is unreachable through port mappings, so the HTTP listeners bind
# 0.0.0.0 (gRPC stays on loopback and is not exposed). The greps fail the build if the
# config changes shape and a sed stops matching, if token authorisation was switched off,
# or if the management API could register archives from URLs.
RUN sed -i \
        -e 's#^inference_address=http://127\.0\.0\.1:#inference_address=http://0.0.0.0:#' \
        -e 's#^management_address=http://127\.0\.0\.1:#management_address=http://0.0.0.0:#' \
        -e 's#^metrics_address=http://127\.0\.0\.1:#metrics_address=http://0.0.0.0:#' \
        -e 's#^model_store=.*#model_store=/home/model-server/model-store#' \
        config.properties \
    && grep -q '^inference_address=http://0\.0\.0\.0:8080$' config.properties \
    && grep -q '^management_address=http://0\.0\.0\.0:8081$' config.properties \
    && grep -q '^metrics_address=http://0\.0\.0\.0:8082$' config.properties \
    && grep -q '^model_store=/home/model-server/model-store$' config.properties \
    && ! grep -qi '^disable_token_authorization *= *true' config.properties \
    && grep -q '^allowed_urls=^\$$' config.properties

USER 10001
ENV PATH=/opt/venv/bin:$PATH \
    OMP_WAIT_POLICY=PASSIVE \
    PYTHONDONTWRITEBYTECODE=1
EXPOSE 8080 8081 8082 8083

# The key keeper's keyless probe (TorchServe's own /ping needs a key that expires).
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as r; r.urlopen('http://127.0.0.1:8083/ready', timeout=8)"]

ENTRYPOINT ["/home/model-server/scripts/container_entry.sh"]
