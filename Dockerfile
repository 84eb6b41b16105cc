# syntax=docker/dockerfile:1
#
# mainloop's images, built from the repository root:
#
#   docker build -t mainloop .                          # `mainloop`: serve, worker, migrate
#   docker build --target worker -t mainloop-worker .
#
# - `mainloop` (the default, last stage): the one binary with the web app embedded, on a slim
#   Debian, as uid 10001. It runs `serve`, `worker` (with the Kubernetes job runner) and
#   `migrate`.
# - `worker`: the same binary plus the Claude Code CLI, git and `mainloop-agent`: what the
#   chat on a Claude subscription runs (the CLI), and what local jobs run when the worker runs
#   jobs as its own child processes (docker-compose.yml). On Kubernetes the worker uses it for
#   the former and starts jobs as Kubernetes Jobs of the agent image (claude-agent/Dockerfile).
#
# Base images are pinned by tag; pin them by digest (`rust:1.92-bookworm@sha256:…`) in your
# own builds if you need reproducible images.

ARG RUST_IMAGE=rust:1.92-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim
ARG RUNTIME_IMAGE=debian:bookworm-slim
# Pinned: the agent speaks the CLI's stream-json and permission protocol, which changes between
# releases. Keep it equal to claude-agent/Dockerfile and scripts/setup.
ARG CLAUDE_CODE_VERSION=2.1.329

# The web app, built once; the Rust build embeds frontend/build.
FROM ${NODE_IMAGE} AS web
WORKDIR /build/frontend
COPY frontend/package.json frontend/package-lock.json ./
RUN --mount=type=cache,target=/root/.npm npm ci --no-audit --no-fund
COPY frontend ./
RUN npm run build

FROM ${RUST_IMAGE} AS builder
WORKDIR /build
# Cargo loads every workspace member's manifest (and its targets) even to build one package,
# so all members are copied.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
COPY api ./api
COPY workflows ./workflows
COPY activities ./activities
COPY store ./store
COPY testkit ./testkit
COPY claude-agent ./claude-agent
COPY --from=web /build/frontend/build ./frontend/build
# The same command `make test` runs (tests/release.rs), so CI proves this build compiles.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/build/target \
    cargo build --locked --release -p mainloop -p mainloop-agent \
    && install -D -m 0755 target/release/mainloop /out/mainloop \
    && install -D -m 0755 target/release/mainloop-agent /out/mainloop-agent

# The worker: local jobs start `mainloop-agent`, which runs the Claude Code CLI and git; the
# chat on a subscription runs the CLI itself.
FROM ${NODE_IMAGE} AS worker
ARG CLAUDE_CODE_VERSION
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates git tini \
    && rm -rf /var/lib/apt/lists/*
RUN npm install -g "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
    && npm cache clean --force \
    && claude --version
COPY --from=builder /out/mainloop /out/mainloop-agent /usr/local/bin/
# Jobs' workspaces and Claude Code's HOME live in the data directory (a volume).
RUN groupadd --gid 10001 mainloop \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/mainloop --shell /usr/sbin/nologin mainloop \
    && install -d -o 10001 -g 10001 /var/lib/mainloop
ENV MAINLOOP_DATA_DIR=/var/lib/mainloop \
    MAINLOOP_JOB_RUNNER=local \
    MAINLOOP_AGENT_BIN=/usr/local/bin/mainloop-agent \
    MAINLOOP_CLAUDE_BIN=/usr/local/bin/claude \
    MAINLOOP_LOG_FORMAT=json \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 \
    DISABLE_AUTOUPDATER=1
USER 10001:10001
WORKDIR /var/lib/mainloop
# tini reaps the jobs' orphaned grandchildren, which a worker restart leaves behind.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/mainloop"]
CMD ["worker"]

FROM ${RUNTIME_IMAGE} AS mainloop
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/mainloop /usr/local/bin/mainloop
RUN groupadd --gid 10001 mainloop \
    && useradd --uid 10001 --gid 10001 --home-dir /var/lib/mainloop --shell /usr/sbin/nologin mainloop \
    && install -d -o 10001 -g 10001 /var/lib/mainloop
ENV MAINLOOP_DATA_DIR=/var/lib/mainloop \
    MAINLOOP_LISTEN=0.0.0.0:8080 \
    MAINLOOP_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/mainloop
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/mainloop", "probe", "http://127.0.0.1:8080/healthz"]
ENTRYPOINT ["/usr/local/bin/mainloop"]
CMD ["serve"]
