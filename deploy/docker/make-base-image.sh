#!/bin/sh
# Builds a stand-in for the official python:3.11-slim-bookworm image from Debian's own
# packages and imports it under the official tag, so that the repository's Dockerfile
# builds unchanged on a machine that can reach Debian's archive but not Docker Hub.
#
#   sudo deploy/docker/make-base-image.sh [TAG]      (default: python:3.11-slim-bookworm)
#
# SUITE and MIRROR (environment) choose the Debian release and archive; EXTRA_CA_CERTS
# adds CA certificates (see below).
#
# Needs root, debootstrap and a running Docker daemon. The result matches the official
# image where the Dockerfile depends on it: python, python3 and python3.11 in
# /usr/local/bin (the venv's interpreter links to it), a working `python -m venv` with
# pip, groupadd/useradd, LANG=C.UTF-8, and a standard library shipped without bytecode
# (the official image deletes its .pyc files; Debian's packages compile them on
# installation, so they are removed here). It is not the official image: the interpreter
# is Debian's python3.11 build, with its standard library in /usr/lib/python3.11.
set -eu

TAG=${1:-python:3.11-slim-bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

for cmd in debootstrap docker tar; do
  command -v "$cmd" >/dev/null 2>&1 || { echo "make-base-image: $cmd is not installed" >&2; exit 2; }
done
[ "$(id -u)" = 0 ] || { echo "make-base-image: debootstrap needs root" >&2; exit 2; }

ROOTFS=$(mktemp -d /tmp/python-slim-rootfs.XXXXXX)
cleanup() {
  status=$?
  if [ "$status" != 0 ] && [ -f "$ROOTFS/debootstrap/debootstrap.log" ]; then
    tail -n 40 "$ROOTFS/debootstrap/debootstrap.log" >&2
  fi
  rm -rf "$ROOTFS"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# minbase: essential and required packages only (this includes passwd, for useradd).
# python3.11-venv brings ensurepip's bundled pip and setuptools for `python -m venv`;
# its dependency python3.11-distutils is virtual (provided by python3-distutils), which
# debootstrap does not resolve by itself.
debootstrap --variant=minbase \
  --include=python3.11,python3.11-venv,python3-distutils,python3-lib2to3,python3-setuptools-whl,ca-certificates \
  "$SUITE" "$ROOTFS" "$MIRROR"

# Behind a proxy that intercepts TLS with a CA of its own, pip inside the build cannot
# reach PyPI unless the image trusts that CA too (Debian's pip reads the system store):
#   EXTRA_CA_CERTS="/usr/local/share/ca-certificates/proxy.crt" make-base-image.sh
# The official image has no such CA; without EXTRA_CA_CERTS nothing is added.
if [ -n "${EXTRA_CA_CERTS:-}" ]; then
  for cert in $EXTRA_CA_CERTS; do
    cp "$cert" "$ROOTFS/usr/local/share/ca-certificates/$(basename "$cert" .crt).crt"
  done
  chroot "$ROOTFS" update-ca-certificates
fi

# The official image's interpreter paths.
for name in python python3 python3.11; do
  ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/$name"
done

# No bytecode in the standard library, as in the official image; no apt lists or
# downloaded packages, which the official image does not carry either.
find "$ROOTFS/usr/lib/python3.11" "$ROOTFS/usr/lib/python3" -depth -type d \
  -name __pycache__ -exec rm -rf {} +
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
  "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/log/*.log

tar --numeric-owner --xattrs -C "$ROOTFS" -c . | docker import \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --message "stand-in for $TAG: debootstrap $SUITE with Debian's python3.11" \
  - "$TAG"

docker run --rm "$TAG" python -c 'import sys, venv; print(sys.version)'
