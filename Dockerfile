# pgcell container image: a static (musl) pgcell binary and the CA bundle,
# nothing else, run as a non-root user.
#
#   docker build --build-arg PGCELL_GIT_REVISION=$(git rev-parse --short=12 HEAD) \
#       -t registry.example.com/pgcell:0.1.0 .
#
# The revision shows in `pgcell --version` and the `revision` label of
# pgcell_build_info (.git is not in the build context, see .dockerignore).
# deploy/kubernetes runs it with `args: [run, --config, ...]` and
# runAsUser 65532 (tests/deploy/image.rs keeps them in step).

ARG RUST_VERSION=1.94

FROM rust:${RUST_VERSION}-bookworm AS build
# musl-tools: ring's C and assembly parts for the static target.
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools ca-certificates \
    && rm -rf /var/lib/apt/lists/*
ARG TARGETARCH=amd64
RUN case "${TARGETARCH}" in \
        amd64) echo x86_64-unknown-linux-musl > /rust-target ;; \
        arm64) echo aarch64-unknown-linux-musl > /rust-target ;; \
        *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac \
    && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY . .
ARG PGCELL_GIT_REVISION=unknown
ENV PGCELL_GIT_REVISION=${PGCELL_GIT_REVISION}
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pgcell --target "$(cat /rust-target)" \
    && install -D -m 0555 "target/$(cat /rust-target)/release/pgcell" /out/pgcell

FROM scratch
COPY --from=build /out/pgcell /usr/local/bin/pgcell
# The AWS SDK (ELBv2, STS for IRSA) verifies AWS endpoints against these.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
USER 65532:65532
# Data, health and admin ports of deploy/kubernetes (config: [listen]).
EXPOSE 6432 6433 9187
ENTRYPOINT ["/usr/local/bin/pgcell"]
