# syntax=docker/dockerfile:1
# The agent customers install in their cluster, as the streamspace-agent chart runs it
# (image ghcr.io/streamspace/streamspace-agent). Build from the repository root:
#
#   docker build -f infra/docker/streamspace-agent.Dockerfile \
#     -t ghcr.io/streamspace/streamspace-agent:0.1.0 --build-arg VERSION=0.1.0 .
#
# A static, CGO-free binary on distroless "nonroot" (uid/gid 65532, the chart's runAsUser).
# It writes only its state directory (/var/lib/streamspace-agent, a volume) and /tmp, so
# it runs with readOnlyRootFilesystem. The chart turns on its health endpoint (:8081).
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/root/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X streamspace.dev/agent/daemon.Version=${VERSION}" \
      -o /out/streamspace-agent ./agent/cmd/streamspace-agent

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/streamspace-agent /streamspace-agent
USER 65532:65532
EXPOSE 8081/tcp
ENTRYPOINT ["/streamspace-agent"]
