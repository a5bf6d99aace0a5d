# Multi-stage: build with the Rust toolchain, run from a small Debian image as a non-root user.
# TLS is rustls throughout (no OpenSSL); ca-certificates is there for Slack Socket Mode's
# WebSocket, which trusts the system's roots.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY config.example.toml ./
RUN cargo build --release --locked --bin portal-bot

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/portal-bot --create-home portal
COPY --from=build /src/target/release/portal-bot /usr/local/bin/portal-bot
USER portal
WORKDIR /var/lib/portal-bot
EXPOSE 3000
ENV PORTAL_BOT_CONFIG=/etc/portal-bot/config.toml
HEALTHCHECK CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/3000 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ok <&3"]
ENTRYPOINT ["portal-bot"]
CMD ["serve"]
