# syntax=docker/dockerfile:1
# The all-in-one control plane binary (`streamspace serve`), as the streamspace chart runs it
# (image ghcr.io/streamspace/streamspace). Build from the repository root:
#
#   docker build -f infra/docker/streamspace.Dockerfile -t ghcr.io/streamspace/streamspace:0.1.0 \
#     --build-arg VERSION=0.1.0 .
#
# A static, CGO-free binary on distroless "nonroot" (uid/gid 65532, the charts' runAsUser):
# no shell, no package manager, and nothing written outside /tmp, so it runs with
# readOnlyRootFilesystem.
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/root/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X streamspace.dev/libs/server.Version=${VERSION}" \
      -o /out/streamspace ./services/streamspace/cmd/streamspace

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/streamspace /streamspace
USER 65532:65532
# 8080: HTTP API, portal, /healthz, /readyz, /metrics. 7443: agents (QUIC on UDP,
# enrollment over HTTPS on TCP).
EXPOSE 8080/tcp 7443/udp 7443/tcp
ENTRYPOINT ["/streamspace"]
CMD ["serve"]
