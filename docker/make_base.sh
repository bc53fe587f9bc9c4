#!/usr/bin/env bash
# Make the local stand-in for the CUDA base image: a minimal Debian bookworm root file system
# (debootstrap --variant=minbase) imported as a Docker image. Used where the CUDA base cannot be
# pulled (this project's machines); real deployments build on the CUDA base (docker/README.md).
#
#   docker/make_base.sh [IMAGE]        # default IMAGE: pathssl-base:bookworm
#
# Does nothing when IMAGE exists. Needs root (debootstrap), debootstrap and a running dockerd.
set -euo pipefail

image="${1:-pathssl-base:bookworm}"
suite="bookworm"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if docker image inspect "$image" > /dev/null 2>&1; then
    echo "make_base: $image exists"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "make_base: error: debootstrap needs root; run as root or make $image another way" >&2
    exit 2
fi
command -v debootstrap > /dev/null || {
    echo "make_base: error: debootstrap not found; apt-get install debootstrap" >&2
    exit 2
}

root="$(mktemp -d /tmp/pathssl-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "make_base: debootstrap --variant=minbase $suite into $root"
start=$(date +%s)
debootstrap --variant=minbase "$suite" "$root" "$mirror" > "$root.log" 2>&1 || {
    tail -20 "$root.log" >&2
    echo "make_base: error: debootstrap failed (full log: $root.log)" >&2
    exit 1
}
rm -f "$root.log"
# What an image does not need: package lists and downloaded .debs (apt-get update refills them).
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
# The same apt setting official Debian images have: no cached .debs left behind by installs.
printf 'APT::Keep-Downloaded-Packages "false";\n' > "$root/etc/apt/apt.conf.d/docker-clean"

tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    - "$image" > /dev/null
echo "make_base: $image made in $(($(date +%s) - start)) s," \
    "$(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
