# syntax=docker/dockerfile:1

# ---- build ------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src

# The whole crate (see .dockerignore): every target declared in Cargo.toml must exist, and
# schemas/ or migrations may be embedded at compile time.
COPY . .

# Cache mounts keep the registry and target dir between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin jobstats \
    && cp target/release/jobstats /usr/local/bin/jobstats

# ---- runtime ----------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: TLS to NATS / key files; curl: the compose healthcheck.
# Not pinned (hadolint DL3008): bookworm's archive drops superseded versions, so a pin breaks
# the build at the next security update; the base image tag fixes the release instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 jobstats \
    && useradd --system --uid 10001 --gid jobstats --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin jobstats \
    && mkdir -p /data \
    && chown jobstats:jobstats /data

COPY --from=builder /usr/local/bin/jobstats /usr/local/bin/jobstats

ENV JOBSTATS_DB_PATH=/data/jobstats.db \
    JOBSTATS_LISTEN=0.0.0.0:8080

VOLUME ["/data"]
WORKDIR /data
USER jobstats:jobstats
EXPOSE 8080

ENTRYPOINT ["jobstats"]
CMD ["serve"]
