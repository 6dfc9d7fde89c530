#!/usr/bin/env bash
# Runs a cargo-fuzz target of fuzz/ for a while: scripts/fuzz.sh TARGET SECONDS
#
# Installs cargo-fuzz when it is missing. cargo-fuzz needs a nightly compiler: the
# nightly toolchain is used when rustup has one, otherwise the stable one with
# RUSTC_BOOTSTRAP=1. The corpus lives in fuzz/corpus/TARGET (seeded from the test
# fixture on the first run); crashes land in fuzz/artifacts/TARGET.
set -euo pipefail

if [[ $# -ne 2 || ! $2 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 TARGET SECONDS" >&2
    exit 2
fi
target=$1
seconds=$2
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    toolchain=(+nightly)
else
    export RUSTC_BOOTSTRAP=1
fi

targets=$(cargo "${toolchain[@]}" fuzz list)
if ! grep -x -- "$target" >/dev/null <<<"$targets"; then
    echo "fuzz.sh: no target '$target'; targets: ${targets//$'\n'/ }" >&2
    exit 2
fi

corpus="corpus/$target"
mkdir -p "$corpus"
fixture="$root/tests/fixtures/asterisk22-capture.raw"
if [[ $target == parser && -z $(ls -A "$corpus") && -f $fixture ]]; then
    # Seeds: two header bytes (limits, no chunk sizes / three chunk sizes) and slices of
    # the real capture, plus a legacy Follows response.
    i=0
    for offset in 0 2000 1000000 7000000; do
        { printf '\x20\x00'; head -c $((offset + 1500)) "$fixture" | tail -c 1500; } >"$corpus/seed-$i"
        { printf '\x48\x03\x06\x00\x40'; head -c $((offset + 600)) "$fixture" | tail -c 600; } >"$corpus/seed-$i-chunked"
        i=$((i + 1))
    done
    printf '\x60\x02\x03\x01Response: Follows\r\nPrivilege: Command\r\nline\r\n\r\nx--END COMMAND--\r\n\r\n' \
        >"$corpus/seed-follows"
fi

exec cargo "${toolchain[@]}" fuzz run "$target" "$corpus" -- -max_total_time="$seconds"
