# Two images on a distroless, non-root base, built from one stage:
#
#   docker build -t localmodelnode-agent .
#       the LocalModelNode agent (and the modelpull CLI, for debugging); the default target
#   docker build --target storage-initializer -t modelpull-storage-initializer .
#       modelpull as KServe's storage-initializer, entrypoint where KServe's image has it
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
# Each image's files, laid out in /out/<image>: its binaries, our licence, and the licence
# files of every crate compiled into them with the list of them. The agent's image has
# `/manager` (the path KServe's DaemonSet runs, so swapping only the image works); the
# storage-initializer's has KServe's entrypoint path as a link to `/modelpull`, whose name
# selects that mode.
COPY LICENSE /out/agent/licenses/LICENSE
COPY LICENSE /out/storage-initializer/licenses/LICENSE
RUN set -eu; \
    licences() { \
      out=$1/licenses/third-party; shift; mkdir -p "$out"; \
      cargo tree --locked "$@" -e normal,build --prefix none \
        --format '{p} {l}' | grep -v ' (/src/' | sed 's/ (\*)$//' | sort -u > "$out/CRATES"; \
      cut -d' ' -f1,2 "$out/CRATES" | sed 's/ v/-/' | while read -r crate; do \
        for src in "${CARGO_HOME:-/usr/local/cargo}"/registry/src/*/"$crate"; do \
          [ -d "$src" ] || continue; \
          mkdir -p "$out/$crate"; \
          find "$src" -maxdepth 1 -type f \( -iname 'licen[cs]e*' -o -iname 'copying*' \
            -o -iname 'notice*' -o -iname 'copyright*' \) -exec cp {} "$out/$crate/" \; ; \
          if [ -z "$(ls -A "$out/$crate")" ]; then rmdir "$out/$crate"; echo "$crate" >> "$out/NO-LICENSE-FILE"; fi; \
        done; \
      done; \
    }; \
    cp target/release/localmodelnode-agent target/release/modelpull /out/agent/; \
    ln -s localmodelnode-agent /out/agent/manager; \
    licences /out/agent -p modelpull-cli -p localmodelnode-agent; \
    init=/out/storage-initializer; \
    mkdir -p "$init/storage-initializer/scripts" /out/mnt; \
    cp target/release/modelpull "$init/"; \
    ln -s /modelpull "$init/storage-initializer/scripts/initializer-entrypoint"; \
    licences "$init" -p modelpull-cli

# modelpull as KServe's storage-initializer: KServe sets only the arguments (`SRC DEST`
# pairs). uid/gid 1000 like KServe's image, so files come out owned as they did; `/mnt` is
# theirs too, as in KServe's image (`/mnt/models` is KServe's volume).
FROM ${RUNTIME_IMAGE} AS storage-initializer
COPY --from=build /out/storage-initializer/ /
COPY --from=build --chown=1000:1000 /out/mnt /mnt
USER 1000:1000
ENTRYPOINT ["/storage-initializer/scripts/initializer-entrypoint"]

# The agent, last so that it is the default target.
FROM ${RUNTIME_IMAGE} AS agent
COPY --from=build /out/agent/ /
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/localmodelnode-agent"]
