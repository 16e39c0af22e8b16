# keygate as a container image. Not built in CI (no Docker engine there).
#   docker build -t keygate .
#   docker run -p 8080:8080 -p 8081:8081 -e KEYGATE_STORE__URL=postgres://... keygate
# See docs/deploy.md.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin keygate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/keygate --shell /usr/sbin/nologin keygate \
    && install -d -o keygate /var/lib/keygate
COPY --from=build /src/target/release/keygate /usr/local/bin/keygate
USER keygate
WORKDIR /var/lib/keygate
ENV KEYGATE_SERVER__GATEWAY_ADDR=0.0.0.0:8080 \
    KEYGATE_SERVER__ADMIN_ADDR=0.0.0.0:8081 \
    KEYGATE_STORE__URL=sqlite:///var/lib/keygate/keygate.db
EXPOSE 8080 8081
VOLUME ["/var/lib/keygate"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve"]
