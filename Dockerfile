# syntax=docker/dockerfile:1
#
# The tollgate container image: one static-ish binary on debian:bookworm-slim, run as a
# non-root user. See docs/deploy.md.
#
#   docker build -t tollgate .
#   docker run --rm -p 4000:4000 -v tollgate-data:/data tollgate
#
# Without a config file the container serves the embedded default (SQLite in /data, the `mock`
# provider serving `mock-echo`) on 0.0.0.0:4000. With a file, mount it and name it:
#
#   docker run --rm -p 4000:4000 -v tollgate-data:/data \
#     -v "$PWD/tollgate.yaml:/etc/tollgate/tollgate.yaml:ro" \
#     -e TOLLGATE_CONFIG=/etc/tollgate/tollgate.yaml -e TOLLGATE_MASTER_KEY=... tollgate
#
# A config file must set `listen: 0.0.0.0:4000` itself: TOLLGATE_LISTEN and
# TOLLGATE_DATABASE_URL below only feed the embedded default.

FROM rust:1-bookworm AS builder
WORKDIR /src
# Only what the build reads: the workspace manifest, the lock file and the crates (every
# member's manifest must be present for cargo to load the workspace).
COPY Cargo.toml Cargo.lock ./
COPY crates ./crates
# The release profile uses fat LTO and one codegen unit: slow to build, fastest to run.
# The target directory is a cache mount, so the binary is copied out in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tollgate --bin tollgate \
    && install -m 0755 target/release/tollgate /usr/local/bin/tollgate

FROM debian:bookworm-slim
# ca-certificates for child processes (stdio MCP servers). tollgate's own TLS clients trust
# the Mozilla roots compiled into the binary, not this store.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 tollgate \
    && useradd --system --uid 10001 --gid tollgate --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin tollgate \
    && mkdir -p /data /etc/tollgate \
    && chown tollgate:tollgate /data
COPY --from=builder /usr/local/bin/tollgate /usr/local/bin/tollgate

# The embedded default's listen address and store (a config file ignores these unless it
# interpolates them). In a container the listener must not be loopback.
ENV TOLLGATE_LISTEN=0.0.0.0:4000 \
    TOLLGATE_DATABASE_URL=sqlite:///data/tollgate.db
WORKDIR /data
VOLUME ["/data"]
USER 10001:10001
EXPOSE 4000
# No HEALTHCHECK: orchestrators probe GET /healthz and GET /readyz (no credentials needed).
# tollgate is PID 1 and handles SIGTERM itself (drain) and SIGHUP (reload).
ENTRYPOINT ["tollgate"]
CMD ["serve"]
