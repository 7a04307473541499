# syntax=docker/dockerfile:1
# One image, every binary: coupon-operator (the entrypoint), coupon-api, coupon-consumer and
# couponctl. The operator starts the campaign workloads from this same image with their own
# command, so one tag describes one release.
#
#   docker build -t ghcr.io/fcfs-coupons/coupon:dev .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# zlib is linked statically (rdkafka's libz-static), SQLite is bundled by sqlx, and Redis and
# database TLS use rustls, so the binaries need glibc, libgcc and OpenSSL 3 (librdkafka's TLS):
# all three are in the distroless "cc" image below.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p coupon-operator -p coupon-api -p coupon-consumer -p couponctl \
    && mkdir -p /out \
    && cp target/release/coupon-operator target/release/coupon-api \
          target/release/coupon-consumer target/release/couponctl /out/

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
# Numeric, so Kubernetes can check runAsNonRoot; nothing is written to the root filesystem.
USER 65532:65532
# 8080 API, 9090 consumer metrics, 8081 operator health and metrics.
EXPOSE 8080 9090 8081
ENTRYPOINT ["coupon-operator"]
