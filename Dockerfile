# syntax=docker/dockerfile:1
# ossvend container image: docker build -t ossvend .
# See docs/deploying.md. scripts/container-smoke reproduces the runtime stage on the host
# (it reads this file), and tests/it/deploy.rs checks it against deploy/kubernetes/.

# ---- build: the official Rust image, the locked dependency set ----------------------
FROM rust:1.95-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: it is rebuilt only when Cargo.toml or
# Cargo.lock change. Stub targets stand in for the sources; the stubs of the test and
# bench the manifest declares (tests/vectors.rs, benches/sign.rs) stay, as cargo wants them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > tests/vectors.rs \
    && echo 'fn main() {}' > benches/sign.rs \
    && cargo build --release --locked --no-default-features \
    && rm -rf src

# The sources. A server-only build: --no-default-features leaves out the `local`
# feature (the `ossvend local` emulators and the config/ and static/ they compile in),
# so the image's `ossvend local` says it was built without it.
COPY src ./src
# touch: COPY keeps the files' times, which may be older than the stub build.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --no-default-features \
    && install -D -m 0555 target/release/ossvend /out/ossvend

# ---- runtime: glibc, libgcc and CA certificates, no shell, no package manager -------
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=build /out/ossvend /usr/local/bin/ossvend
# A safe example config (every grant authenticates). Mount your own over /etc/ossvend.
COPY deploy/kubernetes/base/ossvend.toml /etc/ossvend/ossvend.toml

# Structured logs by default; the config path for `serve` and `check-config`.
ENV OSSVEND_SERVER_LOG_FORMAT=json \
    OSSVEND_CONFIG=/etc/ossvend/ossvend.toml \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    RUST_LOG=info

# distroless "nonroot": uid/gid 65532, numeric so that runAsNonRoot can verify it.
USER 65532:65532
WORKDIR /
EXPOSE 8000

# No HEALTHCHECK: the orchestrator probes /healthz (liveness) and /readyz (readiness).
ENTRYPOINT ["/usr/local/bin/ossvend"]
CMD ["serve", "--config", "/etc/ossvend/ossvend.toml"]
