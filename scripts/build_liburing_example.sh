#!/usr/bin/env bash
# Build liburing's own example echo server (examples/echo-server.c, liburing >= 2.15) into
# build/liburing-example/echo-server, to measure against it like any `exec:` server:
#
#   bash scripts/build_liburing_example.sh
#   .venv/bin/python -m echo_core sweep --mode rr --payloads 512 --connections 64 \
#       --impls "epoll,uring(buf_count=64,buf_size=16384)+mshot+bundle,exec:build/liburing-example/echo-server {port}"
#
# The example is the reference point of issue 18's goal (rr 512 B x 64).  Its source is not part of
# echo_core: the script takes liburing's source package from Debian unstable with a private sources
# list into build/liburing-example/ (apt checks it against the signed index; nothing is installed),
# builds that liburing statically and the one example against it.  ECHO_CORE_LIBURING_EXAMPLE_VERSION=V
# pins the Debian version (default: whatever unstable has).  The example serves each connection with a
# multishot recv on 256 x 4 KiB provided buffers and one send per receive; it does not finish short
# sends, so use it only where a send cannot be short (small request-response messages).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="$PWD/build/liburing-example"
VERSION="${ECHO_CORE_LIBURING_EXAMPLE_VERSION:-}"
. scripts/private_apt.sh
private_apt "$OUT/apt" "deb-src http://deb.debian.org/debian sid main"
rm -rf "$OUT/src" && mkdir -p "$OUT/src"
(cd "$OUT/src" && apt-get "${APT[@]}" source --download-only "liburing${VERSION:+=$VERSION}" >/dev/null) || {
    echo "build_liburing_example: apt could not download liburing's source${VERSION:+ $VERSION} from Debian unstable" >&2; exit 2; }
tarball="$(ls "$OUT"/src/liburing_*.orig.tar.gz)"
tar -C "$OUT/src" -xzf "$tarball"
tree="$(ls -d "$OUT"/src/liburing-*/ | head -1)"
if [ ! -f "$tree/examples/echo-server.c" ]; then
    echo "build_liburing_example: $(basename "$tarball") has no examples/echo-server.c (it came with liburing 2.15)" >&2
    exit 2
fi
echo "== liburing $(basename "$tarball" .orig.tar.gz | cut -d_ -f2) from Debian unstable: building its examples/echo-server"
(cd "$tree" && ./configure > "$OUT/build.log" 2>&1 && make -s -C src >> "$OUT/build.log" 2>&1 &&
    make -s -C examples echo-server >> "$OUT/build.log" 2>&1) || {
    echo "build_liburing_example: the build failed; see $OUT/build.log" >&2; exit 2; }
cp "$tree/examples/echo-server" "$OUT/echo-server"
echo "build_liburing_example: $OUT/echo-server (usage: echo-server PORT)"
