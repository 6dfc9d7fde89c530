#!/usr/bin/env bash
# README's first command: start the sandbox Asterisk 22 (building it the first time,
# about two minutes), then run `ami listen` against it for a few seconds while a
# dialplan loop raises 20 UserEvents and an Originate places a call. Every event comes
# out on stdout as one JSON line; logs go to stderr. Asterisk is stopped at the end if
# this script started it.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/sandbox-env.sh
source scripts/sandbox-env.sh
use_sandbox_asterisk

cargo build --quiet --release -p ami-cli
ami=target/release/ami
# Some traffic while we listen: a call that is answered, and a UserEvent loop.
(
    sleep 0.5
    "$ami" send --config ami.sandbox.toml Originate Channel=Local/answer@test \
        Application=Wait Data=1 Async=true >/dev/null
    "$ami" send --config ami.sandbox.toml Originate Channel=Local/flood@test \
        Application=Wait Data=1 Async=true Variable=COUNT=20 >/dev/null
) 2>/dev/null &
# 400 iterations of at most 25 ms each: a few seconds.
"$ami" listen --config ami.sandbox.toml --max-iterations 400 --tick-timeout-ms 25
wait
