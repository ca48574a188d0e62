#!/usr/bin/env bash
# Builds `mesh-test-busybox:latest`, the image the DockerOps tests and bench
# run, without a registry: a rootfs holding only the static busybox of
# Debian's `busybox-static` package (installed with apt-get when missing),
# `docker import`ed with a command that sleeps an hour and exits at once on
# SIGTERM (PID 1 gets no default signal handlers, so a bare `sleep` would make
# every stop wait for its timeout).
#
# Idempotent: does nothing when the image exists. The image is a fixture kept
# between runs (tests running in parallel share it); `--remove` deletes it.
# Usage: build-test-image.sh [--remove]
set -euo pipefail

image="mesh-test-busybox:latest"
if [ "${1:-}" = "--remove" ]; then
    docker image rm --force "$image" >/dev/null 2>&1 || true
    exit 0
fi
if docker image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi

if ! dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
    echo "build-test-image: installing busybox-static (apt-get)" >&2
    apt-get install -y busybox-static >/dev/null 2>&1 || {
        apt-get update >/dev/null
        apt-get install -y busybox-static >/dev/null
    }
fi

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs/bin" "$rootfs/tmp"
cp /bin/busybox "$rootfs/bin/busybox"
for applet in sh sleep true false cat echo ls ps kill; do
    ln -s busybox "$rootfs/bin/$applet"
done
# Two callers racing here both import; the second only moves the tag.
tar -C "$rootfs" -c . | docker import \
    --change 'CMD ["/bin/sh","-c","trap \"exit 0\" TERM; sleep 3600 & wait"]' \
    - "$image" >/dev/null
echo "build-test-image: built $image" >&2
