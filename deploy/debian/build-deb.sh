#!/usr/bin/env bash
# Build the .deb (cargo-deb): the `tessera` binary, the systemd unit, the sample config as
# /etc/tessera/config.yaml, man pages and shell completions made from the CLI definition.
#   deploy/debian/build-deb.sh            # release build; the .deb lands in $CARGO_TARGET_DIR/debian/
#   PROFILE=dev deploy/debian/build-deb.sh   # quicker, unoptimised binary
# Needs cargo-deb (`cargo install cargo-deb`).
set -euo pipefail
cd "$(dirname "$0")/../.."
profile="${PROFILE:-release}"
target="${CARGO_TARGET_DIR:-target}"
case "$profile" in dev) dir=debug ;; *) dir="$profile" ;; esac
cargo build -p tessera-cli --profile "$profile"
bin="$target/$dir/tessera"
gen=deploy/debian/generated
rm -rf "$gen"
mkdir -p "$gen/man" "$gen/completions"
"$bin" man --dir "$gen/man" >/dev/null
gzip -9n "$gen"/man/*.1
"$bin" completion bash > "$gen/completions/tessera"
"$bin" completion zsh > "$gen/completions/_tessera"
"$bin" completion fish > "$gen/completions/tessera.fish"
cargo deb -p tessera-cli --no-build --profile "$profile" "$@"
