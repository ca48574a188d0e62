#!/usr/bin/env bash
# Builds one test image for the DockerOps tests and bench, without a
# registry, and prints its id: a rootfs holding only the static busybox of
# Debian's `busybox-static` package (installed with apt-get when missing),
# `docker import`ed under TAG with the given labels and a command that sleeps
# an hour and exits at once on SIGTERM (PID 1 gets no default signal
# handlers, so a bare `sleep` would make every stop wait for its timeout).
#
# The rootfs tarball is cached at ROOTFS_TAR (under target/) and rebuilt
# only when busybox is newer, so an image costs one `docker import`. The
# image is not a fixture: the tests remove every image they import
# (tests/support/image.rs), so the tarball is what is kept between runs.
# Usage: build-test-image.sh ROOTFS_TAR TAG [LABEL=VALUE...]
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: build-test-image.sh ROOTFS_TAR TAG [LABEL=VALUE...]" >&2
    exit 64
fi
rootfs_tar="$1"
tag="$2"
shift 2

busybox_installed() {
    dpkg-query -W -f '${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'
}
if ! busybox_installed; then
    # Test processes run this script in parallel: on a fresh machine each
    # would start apt-get and all but one would fail on dpkg's lock. One
    # installs under this lock; the others wait, then find busybox there.
    # The lock timeout covers an apt-get that is not ours.
    mkdir -p "$(dirname "$rootfs_tar")"
    exec 9>"$rootfs_tar.install.lock"
    flock -w 600 9
    if ! busybox_installed; then
        echo "build-test-image: installing busybox-static (apt-get)" >&2
        apt=(apt-get -o DPkg::Lock::Timeout=300)
        "${apt[@]}" install -y busybox-static >/dev/null 2>&1 || {
            "${apt[@]}" update >/dev/null
            "${apt[@]}" install -y busybox-static >/dev/null
        }
    fi
    exec 9>&-
fi

if [ ! -s "$rootfs_tar" ] || [ /bin/busybox -nt "$rootfs_tar" ]; then
    mkdir -p "$(dirname "$rootfs_tar")"
    rootfs="$(mktemp -d)"
    partial="$(mktemp "$rootfs_tar.XXXXXX")"
    trap 'rm -rf "$rootfs" "$partial"' EXIT
    mkdir -p "$rootfs/bin" "$rootfs/tmp"
    cp /bin/busybox "$rootfs/bin/busybox"
    for applet in sh sleep true false cat echo ls ps kill; do
        ln -s busybox "$rootfs/bin/$applet"
    done
    tar -C "$rootfs" -cf "$partial" .
    # A rename is atomic: a test process racing here reads a whole tarball, old or new.
    mv "$partial" "$rootfs_tar"
    echo "build-test-image: cached the rootfs at $rootfs_tar" >&2
fi

changes=(--change 'CMD ["/bin/sh","-c","trap \"exit 0\" TERM; sleep 3600 & wait"]')
for label in "$@"; do
    changes+=(--change "LABEL $label")
done
docker import "${changes[@]}" "$rootfs_tar" "$tag"
