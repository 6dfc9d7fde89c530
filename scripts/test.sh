#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, then every test (unit,
# integration, property, doc tests, and the conformance tests against a real Asterisk
# 22 that scripts/asterisk.sh builds and starts). Installs what it needs first; needs
# root for the Asterisk chroot.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null; then
    echo "error: cargo not found; install Rust with rustup first" >&2
    exit 1
fi
# rustfmt and clippy come with the default rustup profile; add them if missing.
for component in rustfmt clippy; do
    if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
        rustup component add "$component"
    fi
done

# The HTTP endpoint's browser test (ami-cli/src/http.rs) loads the status page in
# headless Chromium: install Debian's package when it is missing. No skipping: if it
# cannot be installed or started, the run fails here.
if ! command -v chromium >/dev/null; then
    echo "== installing chromium (apt-get)"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi
chromium_log=$(mktemp)
if ! chromium --headless --disable-gpu --no-sandbox --dump-dom about:blank >/dev/null 2>"$chromium_log"; then
    cat "$chromium_log" >&2
    echo "error: chromium is installed but does not start" >&2
    exit 1
fi
rm -f "$chromium_log"

# `ami gateway`'s tests run a real Redis 7 (Debian's redis-server) on a free port,
# and its worker examples run under PHP (php-cli, php-redis) and Python (redis-py in
# a venv under target/). Installed when missing; no skipping.
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v php >/dev/null || missing+=(php-cli)
php -m 2>/dev/null | grep -qx redis || missing+=(php-redis)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
# The service files are checked with systemd-analyze verify.
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
    echo "== installing ${missing[*]} (apt-get)"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
redis-server --version
if [ ! -x target/venv/bin/python ] || ! target/venv/bin/python -c 'import redis' 2>/dev/null; then
    echo "== python venv with redis-py (target/venv)"
    python3 -m venv target/venv
    target/venv/bin/pip install --quiet 'redis>=5,<7'
fi
export AMI_PYTHON="$PWD/target/venv/bin/python"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo package (every published crate builds from its package alone)"
# The packages are verified as registry crates, which cargo takes for immutable: a
# build of the same name and version left in a target directory (or unpacked in
# $CARGO_HOME/registry/src/-HASH/) by an earlier run would be used instead of the fresh
# package. So: a target directory of its own, and no copies left, every run.
rm -rf target/package-check "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/ami-*
CARGO_TARGET_DIR=target/package-check \
    cargo package --workspace --exclude ami-tests --allow-dirty --quiet
echo "== cargo install into a temporary root; the installed ami runs"
install_root=$(mktemp -d)
# The release target directory is shared with the tests below, which reuse its builds.
cargo install --path ami-cli --root "$install_root" --target-dir target --locked --quiet
"$install_root/bin/ami" --version
for shell in bash zsh fish; do
    "$install_root/bin/ami" completions "$shell" | grep -q ami
done
"$install_root/bin/ami" manpage | grep -q '^\.TH'
echo "== systemd-analyze verify packaging/systemd/*.service"
# With ExecStart pointing at the installed binary; any complaint fails the run (a
# unit that does not parse is only warned about, with exit code 0).
units=$(mktemp -d)
for unit in packaging/systemd/*.service; do
    sed "s#/usr/local/bin/ami#$install_root/bin/ami#" "$unit" > "$units/$(basename "$unit")"
done
complaints=$(systemd-analyze verify "$units"/*.service 2>&1) || true
rm -rf "$units" "$install_root"
if [ -n "$complaints" ]; then
    echo "$complaints" >&2
    echo "error: systemd-analyze verify complained about the service files" >&2
    exit 1
fi
echo "== Asterisk 22 sandbox (the conformance tests talk to it)"
# A failed start fails the run, never skips.
# shellcheck source=scripts/sandbox-env.sh
source scripts/sandbox-env.sh
use_sandbox_asterisk
echo "Asterisk $AMI_ASTERISK_VERSION on 127.0.0.1:$AMI_ASTERISK_PORT (TLS $AMI_ASTERISK_TLS_PORT)"

# Release mode: the conformance tests flood the client with 100,000s of events from a
# real Asterisk on the same two cores; a debug build is too slow to keep up.
echo "== cargo test (release)"
cargo test --release --workspace --all-targets
echo "== doc tests"
cargo test --release --workspace --doc
echo "== the examples, run against the sandbox Asterisk"
cargo build --release --quiet -p ami-proto -p ami-mio -p ami-tokio --examples
run_example() {
    local name=$1 want=$2 out
    if ! out=$(AMI_HOST=127.0.0.1 AMI_PORT="$AMI_ASTERISK_PORT" \
        AMI_ADDR="127.0.0.1:$AMI_ASTERISK_PORT" AMI_USERNAME=admin \
        AMI_SECRET="$AMI_ASTERISK_SECRET" AMI_ORIGINATE=Local/answer@test \
        timeout 60 "target/release/examples/$name" 2>&1); then
        echo "$out" >&2
        echo "error: example $name failed" >&2
        exit 1
    fi
    if ! grep -qF "$want" <<<"$out"; then
        echo "$out" >&2
        echo "error: example $name did not print: $want" >&2
        exit 1
    fi
    echo "$name: $want"
}
run_example one_server "originate: Success (reason 4)"
run_example many_servers "answers: pong pong pong pong pong pong"
run_example async_client "originate: Success (reason 4)"
run_example sans_io "ping: Pong"
echo "== all checks passed"
