# Builds the kiln binary and runs it on a slim image. The embedded default keeps its state in
# /data (mount a volume there).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin kiln

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kiln /usr/local/bin/kiln
ENV KILN_LISTEN=0.0.0.0:8080 KILN_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["kiln"]
CMD ["serve"]
