# syntax=docker/dockerfile:1
# The metaclinic image: the `metaclinic` binary on PATH, run as uid 10001, with the MIT KEMAR
# HRTF set at /usr/share/metaclinic/hrtf/ (where helm/metaclinic points spatial.hrtf_path).
# The runtime is Debian's C library and the CA certificates, nothing else: no shell, no
# package manager, no compiler.
#
#   docker build --build-arg REVISION="$(git rev-parse --short=12 HEAD)" -t metaclinic:0.1.0 .
#
# scripts/image builds the same image without Docker or a container registry (an OCI archive
# from Debian's packages and the host's cargo): it runs the same `scripts/image rootfs` step
# as the `rootfs` stage below, and takes the image's configuration from this file's last stage.
# So the last stage keeps to one instruction per line (no `\` continuations), LABEL and ENV
# with one key each, exec-form ENTRYPOINT and CMD; scripts/test-image checks the result.

ARG DEBIAN_RELEASE=bookworm

# -- build: the release binary, with cmake and make for the Opus build (gcc comes with the image).
FROM docker.io/library/rust:1-slim-${DEBIAN_RELEASE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The build context has no .git (.dockerignore): the revision comes in as an argument.
ARG REVISION=unknown
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    METACLINIC_REVISION="${REVISION}" cargo build --release --locked --bin metaclinic \
 && objcopy --strip-debug target/release/metaclinic /usr/local/bin/metaclinic

# -- rootfs: the runtime's files, extracted from Debian's packages of the same release.
FROM docker.io/library/debian:${DEBIAN_RELEASE}-slim AS rootfs
WORKDIR /src
COPY Dockerfile ./
COPY scripts/image scripts/lib-setup.sh scripts/
COPY sfu/assets/hrtf/ sfu/assets/hrtf/
COPY --from=build /usr/local/bin/metaclinic /usr/local/bin/metaclinic
RUN apt-get update \
 && scripts/image rootfs /rootfs /usr/local/bin/metaclinic \
 && rm -rf /var/lib/apt/lists/*

# -- the image (scripts/image reads from here on).
FROM scratch
COPY --from=rootfs /rootfs/ /
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="metaclinic"
LABEL org.opencontainers.image.description="MetaClinic: WebRTC SFU and signaling for telemedicine consultations"
LABEL org.opencontainers.image.version="${VERSION}"
LABEL org.opencontainers.image.revision="${REVISION}"
LABEL org.opencontainers.image.source="https://github.com/metaclinic/metaclinic"
LABEL org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/usr/local/bin:/usr/bin:/bin
# The image's copy of the HRTF set. The environment wins over a config file's
# spatial.hrtf_path: set this variable, not the key, to use another set.
ENV METACLINIC_SFU__SPATIAL__HRTF_PATH=/usr/share/metaclinic/hrtf/MIT_KEMAR_normal_pinna.sofa
# Signaling's HTTP and WebSocket listener (http.listen).
EXPOSE 8080/tcp
# An SFU node's control API (control.listen; signaling only).
EXPOSE 7001/tcp
# An SFU node's first media port (rtc.udp_port; media thread i uses 40000 + i).
EXPOSE 40000/udp
# An SFU node's ICE-TCP port (rtc.tcp_port).
EXPOSE 40000/tcp
# An SFU node's embedded TURN server over UDP and TCP (turn.udp_port, turn.tcp_port).
EXPOSE 3478/udp
EXPOSE 3478/tcp
USER 10001:10001
WORKDIR /
ENTRYPOINT ["metaclinic"]
CMD ["--help"]
