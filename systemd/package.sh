#!/usr/bin/env bash
# Build the Debian package: target/debian/ringlb_<version>-1_<arch>.deb.
#   bash systemd/package.sh            # release build (what operators install)
#   bash systemd/package.sh dev        # the debug build (CI's package test)
# Installs cargo-deb (pinned) when it is missing. The man pages and the shell
# completions come from the binary itself (`ringlb manpage`, `ringlb
# completions`), so they always match it.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"
case "$profile" in
    dev) dir=target/debug ;;
    *) dir="target/$profile" ;;
esac
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q "$CARGO_DEB_VERSION"; then
    cargo install cargo-deb --locked --version "$CARGO_DEB_VERSION"
fi
cargo build --profile "$profile" --bin ringlb
bin="$dir/ringlb"
out=target/deb-assets
rm -rf "$out"
mkdir -p "$out"
"$bin" manpage 1 | gzip -9n > "$out/ringlb.1.gz"
"$bin" manpage 5 | gzip -9n > "$out/ringlb.toml.5.gz"
"$bin" completions bash > "$out/ringlb.bash"
"$bin" completions zsh > "$out/_ringlb"
"$bin" completions fish > "$out/ringlb.fish"
cargo deb --no-build --profile "$profile"
ls -1t target/debian/ringlb_*.deb | head -1
