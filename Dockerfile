# localmodelnode-agent (and the modelpull CLI, for debugging) on a distroless, non-root base.
#
#   docker build -t localmodelnode-agent .
#
# Both bases are ARGs so that machines without a registry can build from local stand-ins
# (scripts/image-standins.sh makes them; scripts/test-image.sh builds and checks the image).
ARG BUILDER_IMAGE=docker.io/library/rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY engine engine
COPY agent agent
COPY benches benches
# Without the release profile's line tables: function names stay in backtraces, the image
# loses about 80 MB.
RUN CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked -p modelpull-cli -p localmodelnode-agent --bins
# The image's files, laid out in /out/root: the two binaries, `/manager` (the path KServe's
# DaemonSet runs, so swapping only the image works), our licence, and the licence files of
# every crate compiled into the binaries with the list of them.
COPY LICENSE /out/root/licenses/LICENSE
RUN set -eu; \
    cp target/release/localmodelnode-agent target/release/modelpull /out/root/; \
    ln -s localmodelnode-agent /out/root/manager; \
    out=/out/root/licenses/third-party; mkdir -p "$out"; \
    cargo tree --locked -p modelpull-cli -p localmodelnode-agent -e normal,build --prefix none \
      --format '{p} {l}' | grep -v ' (/src/' | sed 's/ (\*)$//' | sort -u > "$out/CRATES"; \
    cut -d' ' -f1,2 "$out/CRATES" | sed 's/ v/-/' | while read -r crate; do \
      for src in "${CARGO_HOME:-/usr/local/cargo}"/registry/src/*/"$crate"; do \
        [ -d "$src" ] || continue; \
        mkdir -p "$out/$crate"; \
        find "$src" -maxdepth 1 -type f \( -iname 'licen[cs]e*' -o -iname 'copying*' \
          -o -iname 'notice*' -o -iname 'copyright*' \) -exec cp {} "$out/$crate/" \; ; \
        if [ -z "$(ls -A "$out/$crate")" ]; then rmdir "$out/$crate"; echo "$crate" >> "$out/NO-LICENSE-FILE"; fi; \
      done; \
    done

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/root/ /
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/localmodelnode-agent"]
