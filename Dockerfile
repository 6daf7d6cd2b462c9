# Build: docker build -t ghcr.io/meshrev/meshrev:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin meshrev

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/meshrev /usr/local/bin/meshrev
USER 65532:65532
EXPOSE 9443 9090
ENTRYPOINT ["/usr/local/bin/meshrev"]
CMD ["serve", "--in-cluster", "--listen=0.0.0.0:9443", "--metrics-listen=0.0.0.0:9090"]
