#!/usr/bin/env bash
# Makes local stand-ins for the Dockerfile's two base images from this machine, for engines
# that cannot reach a registry (the development and CI machines):
#   modelpull-standin/rust:bookworm      like rust:1-bookworm: gcc, libc headers, dash and
#                                        coreutils from the host's Debian packages, the host's
#                                        Rust toolchain in /usr/local/cargo, and a copy of the
#                                        host's crate cache so `cargo build --locked` runs
#                                        offline.
#   modelpull-standin/cc-debian12:nonroot like gcr.io/distroless/cc-debian12:nonroot: libc6,
#                                        libgcc-s1, CA certificates, passwd/group with
#                                        `nonroot` (65532), /tmp and /home/nonroot. No shell, no
#                                        package manager.
# An image is rebuilt only when its inputs (toolchain version, lockfile) changed. Runs as root
# (the runtime root's /home/nonroot is chowned to 65532).
# Usage: scripts/image-standins.sh            prints the two image names, one per line
set -euo pipefail
cd "$(dirname "$0")/.."

builder=modelpull-standin/rust:bookworm
runtime=modelpull-standin/cc-debian12:nonroot
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Copies the files of Debian packages into a root, with /lib, /bin and /sbin merged into /usr
# as on Debian 12 and without documentation.
copy_packages() {
  local root=$1
  shift
  mkdir -p "$root/usr/lib" "$root/usr/bin" "$root/usr/sbin" "$root/usr/lib64"
  ln -sfn usr/lib "$root/lib"
  ln -sfn usr/bin "$root/bin"
  ln -sfn usr/sbin "$root/sbin"
  ln -sfn usr/lib64 "$root/lib64"
  dpkg-query -L "$@" | while read -r path; do
    case "$path" in
      /usr/share/doc/* | /usr/share/man/* | /usr/share/info/* | /usr/share/locale/* | /usr/share/lintian/*) continue ;;
    esac
    [ -e "$path" ] || [ -L "$path" ] || continue
    [ -d "$path" ] && [ ! -L "$path" ] && continue
    local dir
    dir=$(realpath "$(dirname "$path")")
    mkdir -p "$root$dir"
    cp -a "$path" "$root$dir/"
  done
}

# The installed packages that the named ones need, the named ones included.
closure() {
  apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
    --no-replaces --no-enhances "$@" 2>/dev/null |
    grep -v '^ ' | grep -v '^<' | sort -u |
    while read -r pkg; do
      dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q 'install ok installed' && echo "$pkg"
    done
}

users() {
  local root=$1
  mkdir -p "$root/etc" "$root/home/nonroot" "$root/root" "$root/tmp"
  chmod 1777 "$root/tmp"
  chown 65532:65532 "$root/home/nonroot"
  chmod 700 "$root/root"
  cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
  cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
nonroot:x:65532:
EOF
  echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
  cp /etc/os-release "$root/etc/os-release"
  mkdir -p "$root/etc/ssl/certs"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
}

up_to_date() {
  local image=$1 inputs=$2
  [ "$(docker image inspect -f '{{index .Config.Labels "modelpull.inputs"}}' "$image" 2>/dev/null)" = "$inputs" ]
}

toolchain=$(rustc --print sysroot)
rust_version=$(rustc --version)
lock_hash=$(sha256sum Cargo.lock | cut -c1-16)

inputs="$rust_version lock=$lock_hash"
if ! up_to_date "$builder" "$inputs"; then
  echo "making $builder from the host ($rust_version)" >&2
  cargo fetch --locked --quiet
  root=$work/builder
  # shellcheck disable=SC2046
  copy_packages "$root" $(closure gcc libc6-dev dash coreutils findutils sed grep)
  ln -sfn gcc "$root/usr/bin/cc"
  ln -sfn dash "$root/usr/bin/sh"
  users "$root"
  mkdir -p "$root/usr/local/cargo/bin" "$root/usr/local/rustup"
  cp -a "$toolchain/bin" "$toolchain/lib" "$toolchain/libexec" "$root/usr/local/rustup/"
  ln -sfn ../../rustup/bin/cargo "$root/usr/local/cargo/bin/cargo"
  ln -sfn ../../rustup/bin/rustc "$root/usr/local/cargo/bin/rustc"
  cargo_home=${CARGO_HOME:-$HOME/.cargo}
  mkdir -p "$root/usr/local/cargo/registry"
  cp -a "$cargo_home/registry/index" "$cargo_home/registry/cache" "$root/usr/local/cargo/registry/"
  tar -C "$root" --numeric-owner -c . | docker import \
    -c 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV CARGO_HOME=/usr/local/cargo' \
    -c 'ENV CARGO_NET_OFFLINE=true' \
    -c "LABEL modelpull.inputs=\"$inputs\"" \
    -c 'CMD ["/bin/sh"]' \
    - "$builder" >/dev/null
fi

inputs="libc=$(dpkg-query -W -f='${Version}' libc6)"
if ! up_to_date "$runtime" "$inputs"; then
  echo "making $runtime from the host" >&2
  root=$work/runtime
  copy_packages "$root" libc6 libgcc-s1
  users "$root"
  # dpkg's maintainer files and the loader cache tools are not part of a distroless image.
  rm -f "$root/usr/bin/"* "$root/usr/sbin/"*
  tar -C "$root" --numeric-owner -c . | docker import \
    -c 'USER 65532:65532' \
    -c 'WORKDIR /home/nonroot' \
    -c "LABEL modelpull.inputs=\"$inputs\"" \
    - "$runtime" >/dev/null
fi

echo "$builder"
echo "$runtime"
