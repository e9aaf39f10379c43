# syntax=docker/dockerfile:1
#
# roomcast as a FROM scratch image: one static executable and nothing else.
#
#   docker build -t roomcast .
#   docker run --rm -p 8080:8080 roomcast
#
# The binary is built for x86_64, as Cloud Run runs; on an ARM machine add
# --platform linux/amd64 to the build.
#
# The build stage runs scripts/build-static.sh, the build that
# scripts/test.sh checks (static, under 3 MB) and runs from an empty root
# directory as user 65532, which is what the final stage gives it.

# The toolchain roomcast is developed and tested with.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep downloaded crates and compiled dependencies between
# builds; the binary is copied out of them, as a cache is not part of the
# image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    binary=$(scripts/build-static.sh | tail -n 1) \
    && readelf -d "$binary" | grep -q "There is no dynamic section" \
    && cp "$binary" /roomcast

FROM scratch
COPY --from=build /roomcast /roomcast
# Not root. A number, not a name: there is no /etc/passwd to look one up in.
USER 65532:65532
# Cloud Run sets PORT; elsewhere 8080 is the default. HOST must stay an
# address: the image has no resolver configuration to look a name up with.
ENV PORT=8080
EXPOSE 8080
ENTRYPOINT ["/roomcast"]
