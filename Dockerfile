# One image for every rtmpq node: `rtmpq up` by default, or `rtmpq ingest|relay|edge|transcode ...`
# (compose.yaml runs each role as its own service; deploy/k8s/ does the same on Kubernetes).
#
# The base is a build argument: any Debian-based image with Python >= 3.12 (Debian trixie or
# newer). Where no registry is reachable, make one from Debian's packages (scripts/base-image):
#   buildah bud --format docker --build-arg BASE_IMAGE=localhost/rtmpq-base -t rtmpq .
# (`--format docker` keeps the HEALTHCHECK; OCI images have no field for it.)
ARG BASE_IMAGE=docker.io/library/debian:trixie-slim

# -- build: the wheel, its Cython core compiled here, and every dependency as a wheel ------------
FROM ${BASE_IMAGE} AS build
# Behind a TLS-inspecting proxy, PyPI needs the proxy's CA: mount a bundle for the build and name
# it, e.g. `-v /etc/ssl/certs/ca-certificates.crt:/run/build-ca.crt:ro --build-arg PIP_CERT=/run/build-ca.crt`.
ARG PIP_CERT
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY pyproject.toml setup.py README.md /src/
COPY ext /src/ext
COPY rtmpq /src/rtmpq
# hls.js and the status page are package data (rtmpq/edge/static: fetched by `make hlsjs` before
# the build, or by setup.py during it)
COPY scripts/hlsjs.py /src/scripts/hlsjs.py
# pip builds rtmpq's wheel in an isolated environment with setuptools and Cython (pyproject.toml)
RUN python3 -m venv /opt/rtmpq \
 && /opt/rtmpq/bin/pip wheel --no-cache-dir --wheel-dir /wheels /src \
 && /opt/rtmpq/bin/pip install --no-cache-dir --no-index --find-links /wheels rtmpq \
 && /opt/rtmpq/bin/python -c "import rtmpq.codec as c; assert c.BACKEND == 'compiled', c.BACKEND"

# -- runtime: Python and the installed environment; no compiler, no headers, no pip cache --------
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY --from=build /opt/rtmpq /opt/rtmpq

# The node needs no privileges: its ports are above 1024 and it writes only its state directory.
RUN useradd --system --home-dir /var/lib/rtmpq --create-home --shell /usr/sbin/nologin rtmpq
USER rtmpq
WORKDIR /var/lib/rtmpq

ENV PATH=/opt/rtmpq/bin:$PATH \
    RTMPQ_MOQ_STATE_DIR=/var/lib/rtmpq
# RTMP publishers, MoQ (QUIC) subscribers and relays, HTTP (LL-HLS, health).
EXPOSE 1935/tcp 4443/udp 8080/tcp
# The node's self-signed certificate lives here: keep it on a volume so its fingerprint stays.
VOLUME /var/lib/rtmpq
# Alive: the node's HTTP listener answers /healthz. `rtmpq health` asks it where the node listens
# (the node writes its listener's URL to $RTMPQ_MOQ_STATE_DIR/http.url: the port its --http, config
# file or environment gave; it asked RTMPQ_HTTP_PORT's, 8080 unless set, whatever the command line said).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD rtmpq health || exit 1
ENTRYPOINT ["rtmpq"]
CMD ["up"]
