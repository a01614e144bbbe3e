#!/usr/bin/env bash
# What the tests need beyond `make setup`: Debian's nginx (with its WebDAV module), the
# real server the remote-cache tests run on loopback. Installed when missing and we may.
set -euo pipefail
if [ -x /usr/sbin/nginx ] || command -v nginx >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test-deps: installing nginx (remote-cache tests)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq nginx >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq nginx >/dev/null; }
    # The package starts a system server on port 80; the tests start their own.
    (service nginx stop || pkill -x nginx || true) >/dev/null 2>&1
else
    echo "test-deps: nginx is missing; install Debian's nginx package (the remote-cache tests need it)" >&2
    exit 1
fi
