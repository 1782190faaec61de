# Watermark detector on TorchServe 0.12.
#
# Build (after scripts/create_mar.sh has written model_store/watermark.mar):
#   docker build -t watermark-serve .
#   docker build --build-arg BASE_IMAGE=pytorch/torchserve:0.12.0-cpu -t watermark-serve:cpu .
# Run:
#   docker run --rm --gpus all -p 127.0.0.1:8080-8082:8080-8082 --name wm watermark-serve
# Key (token authorisation stays ON; keys change on every container start and are renewed
# before they expire by scripts/keykeeper.py, which also answers keyless probes on :8083):
#   docker exec wm cat /home/model-server/key_file.json      # "inference" -> "key"
#   curl -H "Authorization: Bearer <key>" -T photo.jpg http://127.0.0.1:8080/predictions/watermark
#   curl http://127.0.0.1:8083/ready                          # liveness: /live
ARG BASE_IMAGE=pytorch/torchserve:0.12.0-gpu
FROM ${BASE_IMAGE}

# Stay on the base image's unprivileged user and home. It is named, not numbered, because
# the base image creates it with `useradd model-server` and we must not guess its uid.
# hadolint ignore=DL3066
USER model-server
WORKDIR /home/model-server

COPY --chown=model-server:model-server config.properties /home/model-server/config.properties
# metrics.yaml: metrics_config=metrics.yaml (relative to the working directory below).
COPY --chown=model-server:model-server metrics.yaml /home/model-server/metrics.yaml
COPY --chown=model-server:model-server model_store/watermark.mar /home/model-server/model-store/watermark.mar
# The key keeper (standard library only) and the module it reads config.properties with.
COPY --chown=model-server:model-server scripts/keykeeper.py scripts/models.py /home/model-server/scripts/

# Container-only config changes, everything else stays as in the repo's config.properties:
# - inside a container 127.0.0.1 is unreachable through -p port mappings, so the three HTTP
#   listeners bind 0.0.0.0 (gRPC stays on loopback and is not exposed); publish the ports
#   on the host's loopback or behind a proxy (see `docker run` above);
# - model_store points at the base image's model store.
# The greps fail the build if the repo config changes shape and a sed stops matching, if
# token authorisation was switched off, or if the management API could register archives
# from URLs (allowed_urls must stay ^$, see config.properties).
RUN sed -i \
        -e 's#^inference_address=http://127\.0\.0\.1:#inference_address=http://0.0.0.0:#' \
        -e 's#^management_address=http://127\.0\.0\.1:#management_address=http://0.0.0.0:#' \
        -e 's#^metrics_address=http://127\.0\.0\.1:#metrics_address=http://0.0.0.0:#' \
        -e 's#^model_store=.*#model_store=/home/model-server/model-store#' \
        /home/model-server/config.properties \
    && grep -q '^inference_address=http://0\.0\.0\.0:8080$' /home/model-server/config.properties \
    && grep -q '^management_address=http://0\.0\.0\.0:8081$' /home/model-server/config.properties \
    && grep -q '^metrics_address=http://0\.0\.0\.0:8082$' /home/model-server/config.properties \
    && grep -q '^model_store=/home/model-server/model-store$' /home/model-server/config.properties \
    && ! grep -qi '^disable_token_authorization *= *true' /home/model-server/config.properties \
    && grep -q '^allowed_urls=^\$$' /home/model-server/config.properties

# onnxruntime serves archives built with create_mar.sh --format onnx (TorchScript needs
# nothing extra). OMP_WAIT_POLICY: idle OpenMP threads sleep instead of spinning, as
# scripts/serve.sh sets it (measured in scripts/bench.py).
RUN pip install --no-cache-dir onnxruntime==1.31.1
ENV OMP_WAIT_POLICY=PASSIVE

EXPOSE 8080 8081 8082 8083

# The key keeper's keyless probe (TorchServe's /ping needs the inference key, which expires).
HEALTHCHECK --interval=30s --timeout=10s --start-period=180s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as r; r.urlopen('http://127.0.0.1:8083/ready', timeout=8)"]

# Own entrypoint instead of the base image's `serve` (which passes its own flags): TorchServe
# runs in the foreground from /home/model-server, so key_file.json is written there, with
# token authorisation on and the model API limited to the model store (allowed_urls=^$) as
# config.properties says; the key keeper runs beside it (probes on 0.0.0.0:8083). On docker
# stop (SIGTERM) the trap runs `torchserve --stop` so Java and its Python workers exit
# cleanly; the keeper exits when key_file.json goes away.
ENTRYPOINT ["/bin/bash", "-c", "cd /home/model-server || exit 1; torchserve --start --foreground --ts-config /home/model-server/config.properties & pid=$!; python3 scripts/keykeeper.py --config config.properties --key-file key_file.json --listen 0.0.0.0:8083 & trap 'torchserve --stop; wait $pid' TERM INT; wait $pid"]
