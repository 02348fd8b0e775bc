# Herald: a static binary on a distroless base. Build with
#   docker build -t herald --build-arg VERSION=$(git describe --always) .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/herald ./cmd/herald \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/herald /usr/local/bin/herald
# An empty data directory owned by the nonroot user, so a named volume
# mounted there inherits that ownership.
COPY --from=build --chown=65532:65532 /out/data /data
# listen and data_dir come from this file, not from HERALD_* variables: a
# variable would override every mounted configuration file (the compose
# example's listen: 0.0.0.0:8443 among them). See deploy/image/herald.yaml.
COPY deploy/image/herald.yaml /etc/herald/herald.yaml
USER 65532:65532
# Listening on 0.0.0.0 needs smtp.host (or smtp.dev_mailbox: true to keep mail
# in the dev mailbox, read in the console) and public_base_url, from a mounted
# file or -e variables: Herald refuses to start without them.
ENV HERALD_CONFIG=/etc/herald/herald.yaml
VOLUME ["/data"]
EXPOSE 8090
# The image has no curl: herald asks its own /_herald/ready (exit 0 or 1).
# It reads the configuration as serve does (HERALD_CONFIG, HERALD_* variables).
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s CMD ["/usr/local/bin/herald", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve"]
