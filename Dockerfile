# Builds the kiln binary and runs it on a slim image. Every role is the same image:
# `serve` (the embedded default, state in /data), `api`, `worker`, `migrate`, `keys`.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin kiln

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/kiln /usr/local/bin/kiln
# Readiness probe for orchestrators: the api answers /readyz once its ledger does.
RUN printf '#!/bin/sh\nexec curl -fsS http://127.0.0.1:8080/readyz >/dev/null\n' > /usr/local/bin/kiln-ready \
    && chmod +x /usr/local/bin/kiln-ready
ENV KILN_LISTEN=0.0.0.0:8080 KILN_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["kiln"]
CMD ["serve"]
