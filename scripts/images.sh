#!/usr/bin/env bash
# The product's container image and a pause image, built on this machine without Docker or a
# registry: OCI image layouts made with umoci, written as docker-archive tarballs by skopeo, and
# (with `import`) loaded into a containerd under the names the chart and the node use.
#
#   scripts/images.sh build            build both archives (once per set of binaries); print paths
#   scripts/images.sh import SOCKET    build if needed, then import both into containerd's k8s.io
#                                      namespace at SOCKET (what `scripts/cluster.sh up --node` does)
#   scripts/images.sh names            print the two image names
#
# The coupon image is what the Dockerfile builds, from the binaries of this checkout: the four
# release binaries in /usr/local/bin, exactly the shared libraries they link against (read with
# ldd: glibc, libgcc, OpenSSL 3), CA certificates, /etc/passwd with the non-root user 65532, a
# world-writable /tmp, entrypoint coupon-operator, user 65532:65532. Its name is the chart's
# default: values.yaml's image.repository and Chart.yaml's appVersion (IMAGE overrides).
# The pause image holds scripts/images/pause (a static Go program) as localhost/pause:3.10.
# PROFILE=debug uses target/debug's binaries (stripped) instead of building release ones.
# Archives and their build inputs' fingerprint live in target/images/.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${PROFILE:-release}"
TARGET="${CARGO_TARGET_DIR:-$REPO/target}"
OUT="$TARGET/images"
CHART="$REPO/charts/coupon-operator"
BINARIES=(coupon-operator coupon-api coupon-consumer couponctl)
PAUSE_IMAGE=localhost/pause:3.10
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf '[images] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

coupon_image() {
    if [[ -n ${IMAGE:-} ]]; then echo "$IMAGE"; return; fi
    local repository version
    repository=$(sed -n 's/^  repository: *\([^ ]*\).*/\1/p' "$CHART/values.yaml" | head -n 1)
    version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}.*/\1/p' "$CHART/Chart.yaml")
    [[ -n $repository && -n $version ]] || die "cannot read image.repository and appVersion from $CHART"
    echo "$repository:$version"
}

# need COMMAND PACKAGE: install a Debian package when COMMAND is missing
need() {
    command -v "$1" >/dev/null && return 0
    command -v apt-get >/dev/null || die "$1 not found (Debian package $2)"
    log "installing $2"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2"; } >&2 ||
        die "apt-get could not install $2"
}

binaries() {
    if [[ $PROFILE == release ]]; then
        log "building the release binaries"
        local args=() b
        for b in "${BINARIES[@]}"; do args+=(-p "$b"); done
        (cd "$REPO" && cargo build --release --locked "${args[@]}" >&2) || die "cargo build failed"
    fi
    local b
    for b in "${BINARIES[@]}"; do
        [[ -x $TARGET/$PROFILE/$b ]] || die "target/$PROFILE/$b missing (cargo build --bins first)"
    done
}

# rootfs DIR: the coupon image's files, from this machine's binaries and libraries
coupon_rootfs() {
    local root=$1 b lib
    mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
    for b in "${BINARIES[@]}"; do
        cp "$TARGET/$PROFILE/$b" "$root/usr/local/bin/"
        strip --strip-debug "$root/usr/local/bin/$b"
    done
    # every library the binaries load, at the path the dynamic linker looks for it
    for lib in $(for b in "${BINARIES[@]}"; do ldd "$TARGET/$PROFILE/$b"; done |
        awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    [[ -r /etc/ssl/certs/ca-certificates.crt ]] && cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
    chmod 1777 "$root/tmp"
    chown 65532:65532 "$root/home/nonroot"
}

pause_rootfs() {
    local root=$1
    mkdir -p "$root"
    (cd "$REPO/scripts/images/pause" && GOWORK=off GOTOOLCHAIN=local CGO_ENABLED=0 \
        go build -trimpath -buildvcs=false -ldflags "-s -w" -o "$root/pause" . >&2) || die "building pause failed"
}

# image NAME ROOTFS_FUNCTION ARCHIVE CONFIG_ARGS...: one image from scratch into a docker-archive
image() {
    local name=$1 fill=$2 archive=$3 work
    shift 3
    work=$(mktemp -d "$OUT/work.XXXXXX")
    umoci init --layout "$work/oci" >&2
    umoci new --image "$work/oci:img" >&2
    umoci unpack --image "$work/oci:img" "$work/bundle" >&2
    "$fill" "$work/bundle/rootfs"
    umoci repack --image "$work/oci:img" "$work/bundle" >&2
    umoci config --image "$work/oci:img" --config.workingdir / "$@" >&2
    rm -f "$archive"
    skopeo copy --quiet "oci:$work/oci:img" "docker-archive:$archive:$name" >&2
    rm -rf "$work"
    log "built $name ($(du -h "$archive" | cut -f1)): $archive"
}

# A fingerprint of what the images are made of; an unchanged one skips the build.
fingerprint() {
    {
        coupon_image
        echo "$PAUSE_IMAGE"
        sha256sum "$REPO/scripts/images.sh" "$REPO/scripts/images/pause/main.go"
        local b
        for b in "${BINARIES[@]}"; do sha256sum "$TARGET/$PROFILE/$b"; done
    } | sha256sum | cut -c1-16
}

cmd_build() {
    need umoci umoci
    need skopeo skopeo
    need strip binutils
    binaries
    mkdir -p "$OUT"
    local sum start=$SECONDS
    sum=$(fingerprint)
    if [[ -s $OUT/coupon.tar && -s $OUT/pause.tar && $(cat "$OUT/fingerprint" 2>/dev/null) == "$sum" ]]; then
        log "images up to date ($OUT)"
    else
        rm -rf "$OUT"/work.*
        image "$(coupon_image)" coupon_rootfs "$OUT/coupon.tar" \
            --config.entrypoint coupon-operator --config.user 65532:65532 \
            --config.env PATH=/usr/local/bin:/usr/bin:/bin \
            --config.exposedports 8080/tcp --config.exposedports 8081/tcp --config.exposedports 9090/tcp
        image "$PAUSE_IMAGE" pause_rootfs "$OUT/pause.tar" --config.entrypoint /pause --config.user 65535:65535
        echo "$sum" >"$OUT/fingerprint"
        log "built the images in $((SECONDS - start))s"
    fi
    echo "$OUT/coupon.tar"
    echo "$OUT/pause.tar"
}

cmd_import() {
    local socket=${1:?usage: $0 import SOCKET} archive start
    cmd_build >/dev/null
    start=$SECONDS
    for archive in "$OUT/coupon.tar" "$OUT/pause.tar"; do
        ctr --address "$socket" --namespace k8s.io images import "$archive" >&2 ||
            die "ctr could not import $archive"
    done
    log "imported $(coupon_image) and $PAUSE_IMAGE into containerd in $((SECONDS - start))s"
}

case "${1:-}" in
    build) cmd_build ;;
    import) cmd_import "${2:-}" ;;
    names) coupon_image; echo "$PAUSE_IMAGE" ;;
    *) echo "usage: $0 build|import SOCKET|names" >&2; exit 2 ;;
esac
