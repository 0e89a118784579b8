# The FHIR test server of docker/compose.yaml: Helios hfs 0.2.7, R4 with SQLite, built as
# scripts/install-hfs.sh builds it for the integration tests. A test server, not for production.

FROM rust:1.95-slim-bookworm AS build
RUN cargo install helios-hfs --version 0.2.7 --locked \
    --no-default-features --features R4,sqlite --root /opt/hfs

FROM debian:bookworm-slim
RUN groupadd --system --gid 10002 hfs \
 && useradd --system --uid 10002 --gid 10002 --home-dir /data hfs \
 && mkdir -p /data/export \
 && chown -R 10002:10002 /data
COPY --from=build /opt/hfs/bin/hfs /usr/local/bin/hfs
# Without the registry file, searching by `patient` is unknown to the server (tests/it/harness.rs).
COPY --chown=10002:10002 vendor/fhir/search-parameters-r4.json /data/search-parameters-r4.json
USER 10002:10002
WORKDIR /data
ENV HFS_SEED_CONFORMANCE=false
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=6 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /metadata HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["hfs", "--host", "0.0.0.0", "--port", "8080", "--base-url", "http://hfs:8080", \
  "--data-dir", "/data", "--database-url", "/data/fhir.db", "--export-dir", "/data/export"]
