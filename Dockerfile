# eppmux container image.
#   docker build -t eppmux .
# Build stage: the release binary, with the locked dependency versions.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Every member of the workspace (the binary needs the wire and mock crates; cargo reads all).
COPY crates ./crates
# The demo compiles the example certificates in (include_str!).
COPY certs-example ./certs-example
RUN cargo build --release --locked --bin eppmux

# Run stage: distroless "cc" = glibc, libgcc and CA certificates, nothing else (no shell, no curl);
# ":nonroot" runs as uid 65532. The container healthcheck is `eppmux healthcheck`.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/eppmux /usr/local/bin/eppmux
USER 65532:65532
# 700: EPP (TLS); 9700: admin endpoint. Binding 700 as a non-root user needs
# net.ipv4.ip_unprivileged_port_start=0 (see docker-compose.yml).
EXPOSE 700 9700
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s CMD ["/usr/local/bin/eppmux", "healthcheck", "--admin", "127.0.0.1:9700"]
ENTRYPOINT ["/usr/local/bin/eppmux"]
