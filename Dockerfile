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
ENV HERALD_CONFIG=/etc/herald/herald.yaml
VOLUME ["/data"]
EXPOSE 8090
ENTRYPOINT ["/usr/local/bin/herald"]
CMD ["serve"]
