# syntax=docker/dockerfile:1
# Build: docker build -t keyport .   Run: docker run -p 8080:8080 -v keyport-data:/var/lib/keyport keyport
FROM golang:1.26-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends libpcsclite-dev libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build -trimpath -ldflags "-s -w" -o /out/keyport ./cmd/keyport

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends softhsm2 opensc libpcsclite1 libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --home /var/lib/keyport --create-home keyport
COPY --from=build /out/keyport /usr/local/bin/keyport
USER keyport
ENV KEYPORT_DATA_DIR=/var/lib/keyport KEYPORT_ADDR=0.0.0.0:8080
VOLUME /var/lib/keyport
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/keyport"]
CMD ["serve"]
