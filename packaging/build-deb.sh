#!/usr/bin/env bash
# Builds target/debian/mta-stsd_VERSION_ARCH.deb with cargo-deb.
# Reproducible: timestamps come from the last commit (SOURCE_DATE_EPOCH).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --version 3.8.0
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
    export SOURCE_DATE_EPOCH
fi
mkdir -p target/man
for page in mta-stsd.8 mta-stsd.toml.5; do
    gzip -9 -n -c "packaging/man/$page" > "target/man/$page.gz"
    touch -d "@$SOURCE_DATE_EPOCH" "target/man/$page.gz"
done
cargo deb --locked "$@"
