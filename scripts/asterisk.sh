#!/usr/bin/env bash
# Starts and stops real Asterisk 22 instances for the test suite.
#
#   scripts/asterisk.sh start  [NAME]   start instance NAME (default: a); prints its env
#   scripts/asterisk.sh stop   [NAME]   stop it (NAME "all" stops every instance)
#   scripts/asterisk.sh status [NAME]   exit 0 if running, 3 if not (NAME "all": list)
#   scripts/asterisk.sh env    [NAME]   print the env of a running instance
#
# Typical use:   set -a; eval "$(scripts/asterisk.sh start)"; set +a
#
# `start` prints KEY=VALUE lines on stdout (progress goes to stderr):
#   AMI_ASTERISK_<NAME>_{HOST,PORT,TLS_PORT,TLS_CA,USER,SECRET,VERSION,FULL_VERSION,
#   AMI_VERSION,LOG} (VERSION 22.10.1, FULL_VERSION the Debian one, AMI_VERSION the banner's)
# and, for instance `a` only, the same without the <NAME>_ part (AMI_ASTERISK_PORT, ...).
# The same lines are kept in <run dir>/env for harnesses that prefer a file.
#
# Asterisk 22 comes from Debian sid (bookworm/trixie do not carry it), installed with
# debootstrap into a chroot that is built once and cached outside the clone:
#   AMI_ASTERISK_CHROOT    chroot directory (default /var/cache/ami-rs/asterisk-sid)
#   AMI_ASTERISK_MIRROR    Debian mirror (default: the one this machine's apt sources name)
#   AMI_ASTERISK_TIMEOUT   seconds `start` waits for a working AMI login (default 30)
#   AMI_ASTERISK_PORTS     "PORT TLS_PORT": start on these ports instead of free ones
#                          (e.g. to restart a stopped instance where clients expect it);
#                          `start` fails if they are taken
# Asterisk runs as root inside the chroot (no mounts are needed: it runs without /proc;
# debootstrap leaves the device nodes it needs in the chroot's /dev). Each instance has
# its own directories inside the chroot:
#   /etc/ami-rs/NAME        configuration written by this script at every start
#   /run/ami-rs/NAME        control socket, pid file, state and env files
#   /var/log/ami-rs/NAME    messages.log (notice/warning/error) and console.log (stdout/err)
#   /var/spool/ami-rs/NAME, /var/lib/ami-rs/NAME   spool and astdb
# and one TLS CA + server certificate shared by all instances in /etc/ami-rs/tls.
#
# AMI users (all limited to 127.0.0.1):
#   admin/amp111   read=all write=all
#   nocall/amp111  read=every class except `call` (never sees OriginateResponse)
#   slow/amp111    read=all write=all, writetimeout=100 (ms)
# Dialplan context `test`: answer, busy, congestion, noanswer, wait, echo, flood, park,
# queue (see write_config below); `nosuch` is deliberately not defined.
#
# Needs root (chroot, debootstrap). On failure it prints the reason and the tail of
# Asterisk's logs to stderr and exits non-zero, so that a test suite fails, not skips.
set -euo pipefail

CHROOT=${AMI_ASTERISK_CHROOT:-/var/cache/ami-rs/asterisk-sid}
CHROOT=${CHROOT%/}
LOCK="$CHROOT.lock"
TIMEOUT=${AMI_ASTERISK_TIMEOUT:-30}
ASTERISK=/usr/sbin/asterisk
# Marker written as the last step of a chroot build.
READY_MARK=.ami-rs-complete
# Modules loaded explicitly (autoload = no). Local channels, the manager, Answer, Wait,
# Hangup, Set, GotoIf, Busy, Congestion, Ringing are in the core on Asterisk 22.
# res_parking (Park) needs the holding bridge.
MODULES=(pbx_config app_userevent app_while app_verbose app_echo app_stack app_originate
    app_dial func_strings func_logic func_callerid func_channel func_math bridge_simple
    bridge_holding app_queue res_musiconhold res_parking)

log() { echo "asterisk.sh: $*" >&2; }
die() {
    echo "asterisk.sh: error: $*" >&2
    exit 1
}

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# ---------------------------------------------------------------------------------------
# Host prerequisites and the chroot

apt_updated=0
# Installs a host package when COMMAND is missing: host_need COMMAND PACKAGE
host_need() {
    command -v "$1" >/dev/null 2>&1 && return 0
    log "installing $2 on the host"
    if [[ $apt_updated -eq 0 ]]; then
        apt-get -o Acquire::Check-Valid-Until=false update >&2 || die "apt-get update failed"
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >&2 ||
        die "apt-get install $2 failed"
}

# The Debian mirror named by this machine's apt sources: the first URI ending in /debian
# (not debian-security, not a third-party repository), in deb822 `.sources` files
# (`URIs:` lines) or one-line `.list` files. Falls back to deb.debian.org.
debian_mirror() {
    if [[ -n ${AMI_ASTERISK_MIRROR:-} ]]; then
        echo "$AMI_ASTERISK_MIRROR"
        return
    fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
        [[ -f $f ]] || continue
        if [[ $f == *.sources ]]; then
            # A URIs: line can name several mirrors.
            uri=$(sed -n 's/^URIs:[[:space:]]*//p' "$f" | tr -s '[:space:]' '\n' | grep -E '^https?://.*/debian/?$' | head -n1 || true)
        else
            uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /=/) { print $i; break } }' "$f" |
                grep -E '^https?://.*/debian/?$' | head -n1 || true)
        fi
        if [[ -n $uri ]]; then
            echo "${uri%/}"
            return
        fi
    done
    echo http://deb.debian.org/debian
}

# Unmounts whatever is mounted under DIR (debootstrap mounts /proc and /sys in its
# target and can leave them behind when it fails).
unmount_under() {
    local dir=$1 mnt
    # /proc/mounts escapes blanks as \040; our paths have none. Deepest first.
    while read -r mnt; do
        umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v d="$dir/" 'index($2 "/", d) == 1 { print $2 }' /proc/mounts | sort -r)
}

# Removes a (half-built) chroot. --one-file-system keeps rm out of anything still
# mounted inside it (a bind-mounted /dev would otherwise lose the host's device nodes).
remove_tree() {
    unmount_under "$1"
    rm -rf --one-file-system "$1"
}

# Builds the chroot once; concurrent callers wait on the lock, then find it built.
# Must be called with the lock held.
ensure_chroot() {
    [[ -e $CHROOT/$READY_MARK ]] && return 0
    local mirror tmp start=$SECONDS
    mirror=$(debian_mirror)
    log "building the Asterisk chroot in $CHROOT from $mirror (once; about a minute)"
    host_need debootstrap debootstrap
    # Leftovers of an interrupted build (the lock is held, so nobody is using them).
    local old
    for old in "$CHROOT".tmp.* "$CHROOT"; do
        if [[ -e $old ]]; then remove_tree "$old"; fi
    done
    tmp="$CHROOT.tmp.$$"
    if ! debootstrap --variant=minbase sid "$tmp" "$mirror" >"$tmp.log" 2>&1; then
        tail -n 30 "$tmp.log" >&2
        remove_tree "$tmp"
        die "debootstrap failed (full log: $tmp.log)"
    fi
    # No service may be started by package scripts inside the chroot.
    printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/usr/sbin/policy-rc.d"
    # The mirror's sid index can be past its Valid-Until date. APT::Sandbox::User=root:
    # root here may lack CAP_DAC_OVERRIDE, so do not download as the _apt user.
    local apt=(apt-get -o Acquire::Check-Valid-Until=false -o APT::Sandbox::User=root)
    if ! { chroot "$tmp" "${apt[@]}" update &&
        chroot "$tmp" env DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y \
            --no-install-recommends asterisk &&
        chroot "$tmp" apt-get clean; } >>"$tmp.log" 2>&1; then
        tail -n 30 "$tmp.log" >&2
        remove_tree "$tmp"
        die "installing asterisk in the chroot failed (full log: $tmp.log)"
    fi
    # Asterisk runs as root; root may be unable to write files owned by `asterisk`.
    local d
    for d in /etc/asterisk /var/lib/asterisk /var/spool/asterisk /var/log/asterisk /var/cache/asterisk /run/asterisk; do
        if [[ -e $tmp$d ]]; then chown -R root:root "$tmp$d"; fi
    done
    chroot "$tmp" "$ASTERISK" -V >"$tmp/$READY_MARK"
    # Rename only when complete: a half-built chroot never has the final name.
    mv "$tmp" "$CHROOT"
    mv "$tmp.log" "$CHROOT.build.log"
    log "chroot ready ($(cat "$CHROOT/$READY_MARK")) in $((SECONDS - start)) s"
}

# A CA and a server certificate for 127.0.0.1/localhost, shared by all instances.
# Tests trust ca.pem. Made with the host's openssl; lock held.
ensure_tls() {
    local dir="$CHROOT/etc/ami-rs/tls"
    # Also needed by every start, to check AMI over TLS.
    host_need openssl openssl
    [[ -s $dir/ca.pem && -s $dir/server.pem && -s $dir/server.key ]] && return 0
    mkdir -p "$dir"
    local work
    work=$(mktemp -d)
    cat >"$work/openssl.cnf" <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = ami-rs test
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
    # A real CA (not a self-signed leaf) so that strict verifiers (rustls/webpki,
    # Python's VERIFY_X509_STRICT) accept the chain.
    if ! {
        openssl req -x509 -new -config "$work/openssl.cnf" -extensions v3_ca -newkey rsa:2048 \
            -nodes -keyout "$work/ca.key" -out "$work/ca.pem" -days 3650 -subj "/CN=ami-rs test CA" &&
            openssl req -new -config "$work/openssl.cnf" -newkey rsa:2048 -nodes \
                -keyout "$work/server.key" -out "$work/server.csr" -subj "/CN=localhost" &&
            openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
                -set_serial "0x$(openssl rand -hex 8)" -days 3650 -extfile "$work/openssl.cnf" \
                -extensions v3_server -out "$work/server.pem"
    } >"$work/log" 2>&1; then
        cat "$work/log" >&2
        rm -rf "$work"
        die "making the TLS certificate failed"
    fi
    install -m 0644 "$work/ca.pem" "$work/server.pem" "$dir/"
    install -m 0600 "$work/ca.key" "$work/server.key" "$dir/"
    rm -rf "$work"
}

# ---------------------------------------------------------------------------------------
# Instances

check_name() {
    [[ $1 =~ ^[a-z][a-z0-9]{0,15}$ ]] || die "bad instance name '$1' (want [a-z][a-z0-9]*)"
    # These would make AMI_ASTERISK_<NAME>_... collide with instance a's unprefixed names.
    case $1 in host | port | tls | user | secret | version | full | ami | log | all)
        die "instance name '$1' is reserved" ;;
    esac
}

# Paths of instance NAME: inside the chroot (etc, run, ...) and seen from the host (h_*).
set_paths() {
    name=$1
    etc=/etc/ami-rs/$name
    run=/run/ami-rs/$name
    logdir=/var/log/ami-rs/$name
    spool=/var/spool/ami-rs/$name
    lib=/var/lib/ami-rs/$name
    h_etc=$CHROOT$etc
    h_run=$CHROOT$run
    h_log=$CHROOT$logdir
}

# The pid of instance NAME if it is running (set_paths first), else fails.
running_pid() {
    local pid
    [[ -r $h_run/pid ]] || return 1
    pid=$(<"$h_run/pid")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == asterisk ]] || return 1
    # Not a zombie waiting to be reaped (state Z/X after the "(comm)" field).
    local stat
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ ${stat:0:1} != [ZX] ]] || return 1
    echo "$pid"
}

# Two distinct free TCP ports on 127.0.0.1. Starts are serialized by the lock and a
# running instance holds its ports, so two instances never get the same ones.
free_ports() {
    if command -v python3 >/dev/null 2>&1; then
        python3 - <<'EOF'
import socket
socks = []
for _ in range(2):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
    else
        # Without python3: random ports that refuse a connection.
        local p ports=()
        while [[ ${#ports[@]} -lt 2 ]]; do
            p=$((20000 + RANDOM % 30000))
            if ! (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null && [[ " ${ports[*]} " != *" $p "* ]]; then
                ports+=("$p")
            fi
        done
        echo "${ports[*]}"
    fi
}

# The directory of Asterisk's modules inside the chroot.
module_dir() {
    local so
    so=$(find "$CHROOT/usr/lib" -name app_userevent.so -print -quit)
    [[ -n $so ]] || die "no Asterisk modules found under $CHROOT/usr/lib"
    so=${so#"$CHROOT"}
    echo "${so%/*}"
}

# Writes the configuration of instance $name (set_paths first) for ports $1 (AMI), $2 (TLS)
# and a token $3 that this start's Asterisk reports as global variable AMI_RS_INSTANCE.
write_config() {
    local port=$1 tls_port=$2 token=$3 moddir m
    moddir=$(module_dir)
    mkdir -p "$h_etc"
    # `[directories]` without `(!)`: the packaged sample makes it a template (ignored).
    cat >"$h_etc/asterisk.conf" <<EOF
[directories]
astetcdir => $etc
astmoddir => $moddir
astvarlibdir => /var/lib/asterisk
astdbdir => $lib
astkeydir => /var/lib/asterisk
astdatadir => /usr/share/asterisk
astagidir => /usr/share/asterisk/agi-bin
astspooldir => $spool
astrundir => $run
astlogdir => $logdir
astsbindir => /usr/sbin
astcachedir => $spool/cache

[options]
verbose = 0
debug = 0
runuser = root
rungroup = root
EOF
    {
        echo "[modules]"
        echo "autoload = no"
        for m in "${MODULES[@]}"; do
            if [[ -e $CHROOT$moddir/$m.so ]]; then
                echo "load = $m.so"
            else
                log "warning: module $m.so is not in the package; not loaded"
            fi
        done
    } >"$h_etc/modules.conf"
    cat >"$h_etc/logger.conf" <<'EOF'
[general]
dateformat = %F %T.%3q
[logfiles]
messages.log => notice,warning,error
EOF
    # Keep per-channel noise down: no CDRs, no CEL.
    printf '[general]\nenable = no\n' >"$h_etc/cdr.conf"
    printf '[general]\nenable = no\n' >"$h_etc/cel.conf"
    # Empty files for what the core reads at boot, to keep errors out of messages.log.
    for m in acl.conf ccss.conf features.conf queuerules.conf udptl.conf; do
        : >"$h_etc/$m"
    done
    # Tones (busy, ringing, congestion) as packaged.
    if [[ -f $CHROOT/etc/asterisk/indications.conf ]]; then
        cp "$CHROOT/etc/asterisk/indications.conf" "$h_etc/"
    fi
    # ACL rules apply in order and the last match wins: deny everything, then permit.
    cat >"$h_etc/manager.conf" <<EOF
[general]
enabled = yes
webenabled = no
port = $port
bindaddr = 127.0.0.1
displayconnects = no
tlsenable = yes
tlsbindaddr = 127.0.0.1:$tls_port
tlscertfile = /etc/ami-rs/tls/server.pem
tlsprivatekey = /etc/ami-rs/tls/server.key

[admin]
secret = amp111
read = all
write = all
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255

; every read class except call: never sees OriginateResponse
[nocall]
secret = amp111
read = system,log,verbose,command,agent,user,config,dtmf,reporting,cdr,dialplan,originate,agi,cc,aoc,test,security,message
write = all
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255

; disconnected when a write to it blocks more than 100 ms
[slow]
secret = amp111
read = all
write = all
writetimeout = 100
deny = 0.0.0.0/0.0.0.0
permit = 127.0.0.1/255.255.255.255
EOF
    cat >"$h_etc/extensions.conf" <<EOF
[general]
static = yes
writeprotect = yes

[globals]
; lets asterisk.sh check that the AMI it reached is this start's
AMI_RS_INSTANCE = $token
EOF
    cat >>"$h_etc/extensions.conf" <<'EOF'

[test]
; answered call: Originate Reason 4
exten => answer,1,Answer()
 same => n,Wait(1)
 same => n,Hangup()

; Reason 5
exten => busy,1,Busy(10)

; Reason 8
exten => congestion,1,Congestion(10)

; rings and never answers: Originate with Timeout 2000 gives Reason 3
exten => noanswer,1,Ringing()
 same => n,Wait(600)

; stays up (Status / CoreShowChannels see it)
exten => wait,1,Answer()
 same => n,Wait(600)
 same => n,Hangup()

exten => echo,1,Answer()
 same => n,Echo()

; UserEvent Flood with Seq: 0..COUNT-1 (COUNT: channel variable, default 10),
; then one UserEvent FloodDone with Count: COUNT.
exten => flood,1,Answer()
 same => n,Set(COUNT=${IF($["${COUNT}" = ""]?10:${COUNT})})
 same => n,Set(I=0)
 same => n,While($[${I} < ${COUNT}])
 same => n,UserEvent(Flood,Seq: ${I})
 same => n,Set(I=$[${I} + 1])
 same => n,EndWhile()
 same => n,UserEvent(FloodDone,Count: ${COUNT})
 same => n,Hangup()

; parks the call in lot default (701-720, 600 s)
exten => park,1,Answer()
 same => n,Park()

; waits in queue support (its one member is paused, so nobody is rung)
exten => queue,1,Answer()
 same => n,Queue(support)
EOF
    cat >"$h_etc/queues.conf" <<'EOF'
[general]
persistentmembers = no

[support]
strategy = ringall
timeout = 15
; interface,penalty,membername,state_interface,ringinuse,wrapuptime,paused
member => Local/answer@test,0,Agent One,,no,0,1
EOF
    cat >"$h_etc/res_parking.conf" <<'EOF'
[general]

[default]
parkext => 700
parkpos => 701-720
context => parkedcalls
parkingtime => 600
EOF
    # No sound files are installed (--no-install-recommends): an empty class.
    mkdir -p "$CHROOT/var/lib/asterisk/moh"
    printf '[default]\nmode = files\ndirectory = /var/lib/asterisk/moh\n' >"$h_etc/musiconhold.conf"
}

# Tries one AMI login on PORT as admin, waits for FullyBooted (modules loaded) and checks
# that global AMI_RS_INSTANCE is TOKEN (not some other Asterisk that holds the port).
# Prints the banner's version on success: ami_probe PORT TOKEN
ami_probe() {
    local port=$1 token=$2
    (
        exec 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
        IFS= read -r -t 5 -u 3 banner || exit 1
        banner=${banner%$'\r'}
        [[ $banner == "Asterisk Call Manager/"* ]] || exit 1
        # Events: system is enough for FullyBooted and keeps other events away.
        printf 'Action: Login\r\nUsername: admin\r\nSecret: amp111\r\nEvents: system\r\n\r\n' >&3
        ok=0
        while IFS= read -r -t 5 -u 3 line; do
            line=${line%$'\r'}
            case $line in
            "Response: Success") ok=1 ;;
            "Response: Error") exit 1 ;;
            "Event: FullyBooted")
                [[ $ok -eq 1 ]] || exit 1
                printf 'Action: GetVar\r\nVariable: AMI_RS_INSTANCE\r\n\r\n' >&3
                ;;
            "Value: "*)
                [[ $line == "Value: $token" ]] || exit 1
                printf 'Action: Logoff\r\n\r\n' >&3
                echo "${banner#Asterisk Call Manager/}"
                exit 0
                ;;
            esac
        done
        exit 1
    ) 2>/dev/null
}

# Prints the env lines of instance $name from its state file.
print_env() {
    local up=${name^^} key val prefixes
    prefixes=("${up}_")
    # Instance a also gets the unprefixed names.
    if [[ $name == a ]]; then prefixes=("" "A_"); fi
    local -A st=()
    while IFS='=' read -r key val; do
        if [[ -n $key ]]; then st[$key]=$val; fi
    done <"$h_run/state"
    local p
    for p in "${prefixes[@]}"; do
        for key in HOST PORT TLS_PORT TLS_CA USER SECRET VERSION FULL_VERSION AMI_VERSION LOG; do
            printf 'AMI_ASTERISK_%s%s=%q\n' "$p" "$key" "${st[$key]-}"
        done
    done
}

fail_start() {
    local why=$1 pid=${2:-}
    {
        echo "asterisk.sh: error: Asterisk instance '$name' did not start: $why"
        local f
        for f in "$h_log/messages.log" "$h_log/console.log"; do
            if [[ -s $f ]]; then
                echo "--- last lines of $f"
                tail -n 40 "$f"
            fi
        done
    } >&2
    if [[ -n $pid ]]; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$h_run"
    exit 1
}

# Starts instance $name (lock held). Returns 2 when the ports were taken meanwhile.
launch() {
    local ports port tls_port pid deadline version full_version ami_version token
    if [[ -n ${AMI_ASTERISK_PORTS:-} ]]; then
        ports=$AMI_ASTERISK_PORTS
    else
        ports=$(free_ports)
    fi
    read -r port tls_port <<<"$ports"
    [[ $port =~ ^[0-9]+$ && $tls_port =~ ^[0-9]+$ ]] || die "bad ports: '$ports'"
    token="$name-$$-$RANDOM$RANDOM"
    write_config "$port" "$tls_port" "$token"
    # A fresh instance: no astdb, spool, run state or logs from an earlier run.
    rm -rf "$h_run" "$CHROOT$spool" "$CHROOT$lib" "$h_log"
    mkdir -p "$h_run" "$CHROOT$spool" "$CHROOT$lib" "$h_log"
    # -f: no fork, so we know the pid and see early exits. fd 9 (the lock) must not be
    # inherited, or the lock would be held for as long as Asterisk runs. setsid: a ^C in
    # the caller's terminal does not reach it.
    setsid chroot "$CHROOT" "$ASTERISK" -f -C "$etc/asterisk.conf" \
        </dev/null >"$h_log/console.log" 2>&1 9>&- &
    pid=$!
    # Recorded at once, so that `stop` finds it even if this script is interrupted.
    echo "$pid" >"$h_run/pid"
    deadline=$((SECONDS + TIMEOUT))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || true
            fail_start "asterisk exited"
        fi
        if grep -qs 'Unable to bind' "$h_log/messages.log"; then
            if [[ -n ${AMI_ASTERISK_PORTS:-} ]]; then
                fail_start "the requested ports $port/$tls_port are taken" "$pid"
            fi
            log "port $port or $tls_port was taken; retrying with others"
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
            return 2
        fi
        if ami_version=$(ami_probe "$port" "$token"); then
            break
        fi
        ((SECONDS < deadline)) || fail_start "no AMI login on 127.0.0.1:$port within $TIMEOUT s" "$pid"
        sleep 0.2
    done
    # AMI over TLS must answer too, with a certificate that verifies against our CA. (A
    # bare TCP connect would do, but Asterisk logs an SSL error for it.)
    local tls_out
    tls_out=$(printf 'Action: Logoff\r\n\r\n' |
        timeout 10 openssl s_client -quiet -ign_eof -connect "127.0.0.1:$tls_port" \
            -CAfile "$CHROOT/etc/ami-rs/tls/ca.pem" -verify_return_error -verify_ip 127.0.0.1 \
            2>"$h_log/tls-check.log") || true
    if [[ $tls_out != "Asterisk Call Manager/"* ]]; then
        cat "$h_log/tls-check.log" >&2
        fail_start "no AMI over TLS on 127.0.0.1:$tls_port" "$pid"
    fi
    # "Asterisk 22.10.1+dfsg+~cs6.17.60671434-1": VERSION=22.10.1, FULL_VERSION=the rest.
    full_version=$(<"$CHROOT/$READY_MARK")
    full_version=${full_version#Asterisk }
    version=${full_version%%[!0-9.]*}
    {
        echo "NAME=$name"
        echo "PID=$pid"
        echo "HOST=127.0.0.1"
        echo "PORT=$port"
        echo "TLS_PORT=$tls_port"
        echo "TLS_CA=$CHROOT/etc/ami-rs/tls/ca.pem"
        echo "USER=admin"
        echo "SECRET=amp111"
        echo "VERSION=$version"
        echo "FULL_VERSION=$full_version"
        echo "AMI_VERSION=$ami_version"
        echo "LOG=$h_log/messages.log"
    } >"$h_run/state"
    print_env >"$h_run/env"
    log "instance $name up: pid $pid, AMI 127.0.0.1:$port, TLS $tls_port, Asterisk $version"
}

# One lock (fd 9) serializes chroot builds, port choices and starts/stops.
take_lock() {
    exec 9>"$LOCK"
    if ! flock -n 9; then
        log "waiting for another asterisk.sh (building the chroot or starting an instance)"
        flock -w 900 9 || die "timed out waiting for the lock $LOCK"
    fi
}

cmd_start() {
    set_paths "$1"
    [[ $EUID -eq 0 ]] || die "must run as root (chroot)"
    mkdir -p "$(dirname "$CHROOT")"
    take_lock
    if running_pid >/dev/null && [[ -s $h_run/state ]]; then
        print_env
        return 0
    fi
    ensure_chroot
    ensure_tls
    local attempt rc
    for attempt in 1 2 3; do
        rc=0
        launch || rc=$?
        [[ $rc -eq 0 ]] && break
        [[ $attempt -lt 3 ]] || fail_start "could not bind free ports three times"
    done
    exec 9>&-
    print_env
}

stop_one() {
    set_paths "$1"
    local pid i
    if pid=$(running_pid); then
        # Asks politely through the control socket, then insists.
        timeout 10 chroot "$CHROOT" "$ASTERISK" -C "$etc/asterisk.conf" -rx 'core stop now' \
            >/dev/null 2>&1 || true
        for i in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            if [[ $i -eq 30 ]]; then kill -TERM "$pid" 2>/dev/null || true; fi
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
        fi
        if kill -0 "$pid" 2>/dev/null; then die "could not stop instance $name (pid $pid)"; fi
        log "instance $name stopped"
    fi
    rm -rf "$h_run"
}

cmd_stop() {
    [[ $EUID -eq 0 ]] || die "must run as root"
    [[ -d $CHROOT ]] || return 0
    take_lock
    local d
    if [[ $1 == all ]]; then
        for d in "$CHROOT"/run/ami-rs/*/; do
            [[ -d $d ]] || continue
            d=${d%/}
            stop_one "${d##*/}"
        done
    else
        stop_one "$1"
    fi
}

status_one() {
    set_paths "$1"
    local pid
    if pid=$(running_pid) && [[ -s $h_run/state ]]; then
        local port tls
        port=$(sed -n 's/^PORT=//p' "$h_run/state")
        tls=$(sed -n 's/^TLS_PORT=//p' "$h_run/state")
        echo "$name: running (pid $pid, AMI 127.0.0.1:$port, TLS port $tls)"
        return 0
    fi
    echo "$name: stopped"
    return 3
}

cmd_status() {
    if [[ $1 == all ]]; then
        local d any=0
        for d in "$CHROOT"/run/ami-rs/*/; do
            [[ -d $d ]] || continue
            d=${d%/}
            status_one "${d##*/}" || true
            any=1
        done
        [[ $any -eq 1 ]] || echo "no instances"
        return 0
    fi
    status_one "$1"
}

cmd_env() {
    set_paths "$1"
    if running_pid >/dev/null && [[ -s $h_run/state ]]; then
        print_env
    else
        die "instance $1 is not running (scripts/asterisk.sh start $1)"
    fi
}

[[ $# -ge 1 && $# -le 2 ]] || usage
cmd=$1
inst=${2:-a}
if [[ $inst != all ]]; then
    check_name "$inst"
fi
case $cmd in
start)
    [[ $inst != all ]] || die "start needs one instance name"
    cmd_start "$inst"
    ;;
stop) cmd_stop "$inst" ;;
status) cmd_status "$inst" ;;
env)
    [[ $inst != all ]] || die "env needs one instance name"
    cmd_env "$inst"
    ;;
*) usage ;;
esac
