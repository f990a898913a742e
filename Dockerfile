# syntax=docker/dockerfile:1
# Build: docker build -t keyport .   Run: docker run -p 8080:8080 -v keyport-data:/var/lib/keyport keyport
# The Debian packages come from the lists in scripts/install-deps.sh (--build here,
# --runtime in the image), which `make test` checks against the code.
FROM golang:1.26-bookworm AS build
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh --build && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build -trimpath -ldflags "-s -w" -o /out/keyport ./cmd/keyport

FROM debian:bookworm-slim
COPY scripts/install-deps.sh /tmp/install-deps.sh
RUN /tmp/install-deps.sh --runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps.sh \
    && useradd --system --home /var/lib/keyport --create-home keyport
COPY --from=build /out/keyport /usr/local/bin/keyport
USER keyport
ENV KEYPORT_DATA_DIR=/var/lib/keyport KEYPORT_ADDR=0.0.0.0:8080
VOLUME /var/lib/keyport
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/keyport"]
CMD ["serve"]
