# syntax=docker/dockerfile:1
#
# Kura's image: the static kura binary on distroless, running as a non-root user with its
# state in the /data volume. Build and run:
#   docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t kura .
#   docker run -p 4000:4000 -p 50051:50051 -v kura-data:/data kura
# Every setting is a KURA_* environment variable (docker run --rm kura --help).

# The builder runs on the build host's platform and cross-compiles for the target one, so a
# multi-platform build (docker buildx build --platform linux/amd64,linux/arm64) needs no
# emulation. Same Go as go.mod's go line.
FROM --platform=$BUILDPLATFORM golang:1.26.8 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# No defaults: BuildKit sets both to the platform being built, and a default would win over
# that (an amd64 binary in the arm64 image).
ARG TARGETOS
ARG TARGETARCH
# CGO_ENABLED=0: a static binary, so the final image needs no libc (ops/dockerfile_test.go
# checks that such a build really has no interpreter or dynamic section).
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath \
      -ldflags "-s -w -X github.com/kuracache/kura/internal/app.Version=${VERSION}" \
      -o /out/kura ./cmd/kura \
 && mkdir -p /out/data

# distroless/static: CA certificates, tzdata and /etc/passwd with the nonroot user (65532),
# no shell and no package manager; the health check is the binary itself (kura healthcheck).
FROM gcr.io/distroless/static-debian12:nonroot
ARG VERSION=dev
LABEL org.opencontainers.image.title="kura" \
      org.opencontainers.image.description="A leaderless, distributed cache for build artifacts" \
      org.opencontainers.image.source="https://github.com/kuracache/kura" \
      org.opencontainers.image.version="${VERSION}"
COPY --from=build /out/kura /kura
# A fresh named volume is initialised from the image's /data, so it is owned by nonroot too.
COPY --from=build --chown=65532:65532 /out/data /data
ENV KURA_DATA_DIR=/data
VOLUME ["/data"]
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# HTTP API, REAPI gRPC, gossip (TCP and UDP), internal plane.
EXPOSE 4000 50051 7946 7946/udp 7443
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/kura", "healthcheck"]
# kura drains on SIGTERM within KURA_DRAIN_TIMEOUT_MS (25 s): give it
# docker stop -t 30 (compose: stop_grace_period: 30s).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/kura"]
