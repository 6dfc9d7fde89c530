# shellcheck shell=bash
# Sourced by scripts that need the sandbox Asterisk (test.sh, listen-sandbox.sh):
# `use_sandbox_asterisk` starts instance `a` (building the chroot the first time),
# exports its AMI_ASTERISK_* variables, and stops it on exit only if it was not
# already running (someone else may be using it). A failed start exits non-zero:
# callers fail, never skip.
use_sandbox_asterisk() {
    local was_running=no asterisk_env
    if bash scripts/asterisk.sh status a >/dev/null 2>&1; then
        was_running=yes
    fi
    # An assignment keeps the exit status, so `set -e` stops on a failed start.
    asterisk_env=$(bash scripts/asterisk.sh start a)
    set -a
    eval "$asterisk_env"
    set +a
    if [[ $was_running == no ]]; then
        trap 'bash scripts/asterisk.sh stop a >/dev/null 2>&1 || true' EXIT
    fi
}
