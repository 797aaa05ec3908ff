# Shared by the end-to-end scripts (sourced, not run): the test world's command
# channel, the case verdict lines, and stopping what a script started.
#
# A script sets W (its work directory) and appends the PIDs it starts to `pids`.

pids=()
failures=0

# Stops every process in `pids` and waits for them to exit before their files are
# removed (the daemon flushes its cache and writes its checkpoint on the way out).
# KEEP=1 keeps the work directory. `before_stop` runs first, if a script defines it.
stop_all() {
    if declare -F before_stop >/dev/null; then before_stop; fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 100); do
        local alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    if [ "${KEEP:-}" = "" ]; then rm -rf "$W"; else echo "work directory kept: $W"; fi
}

# start_world BIN_DIR [ARGS...]: mta-sts-testworld, with its CA in $W/ca.pem and
# received mail in $W/received.
start_world() {
    local bin=$1
    shift
    mkdir -p "$W/received"
    coproc WORLD { "$bin/mta-sts-testworld" --ca "$W/ca.pem" --mail-dir "$W/received" "$@" 2>"$W/world.log"; }
    pids+=("$WORLD_PID")
    local line
    read -r line <&"${WORLD[0]}"
    [ "$line" = ready ] || { echo "testworld did not start: $line"; cat "$W/world.log"; exit 1; }
}

# delivery_world: the receivers and the domains every delivery script's cases use.
# Receivers: 127.0.0.2 (STARTTLS, certificate chosen by SNI), 127.0.0.3 (no STARTTLS),
# 127.0.0.4 (STARTTLS, untrusted certificate when no SNI is sent), 127.0.0.5
# (STARTTLS). Domains: good, badcert (certificate for another name), notls, testing
# (untrusted certificate), plain (no policy), cached, sni (valid only when asked by
# SNI), pattern (*.pattern.test, MX one label down), deep (*.deep.test, MX two labels
# down), each .test.
delivery_world() {
    world smtp 127.0.0.2 tls
    world smtp 127.0.0.3 plain
    world smtp 127.0.0.4 tls untrusted
    world smtp 127.0.0.5 tls
    #      domain          id mode     mx host               receiver
    world policy good.test    1 enforce  mx.good.test;    world mx good.test mx.good.test 127.0.0.2;       world cert mx.good.test valid
    world policy badcert.test 1 enforce  mx.badcert.test; world mx badcert.test mx.badcert.test 127.0.0.2; world cert mx.badcert.test wrong-name
    world policy notls.test   1 enforce  mx.notls.test;   world mx notls.test mx.notls.test 127.0.0.3
    world policy testing.test 1 testing  mx.testing.test; world mx testing.test mx.testing.test 127.0.0.4; world cert mx.testing.test untrusted
                                                          world mx plain.test mx.plain.test 127.0.0.4
    world policy cached.test  1 enforce  mx.cached.test;  world mx cached.test mx.cached.test 127.0.0.2;   world cert mx.cached.test valid
    world policy sni.test     1 enforce  mx.sni.test;     world mx sni.test mx.sni.test 127.0.0.4;         world cert mx.sni.test valid
    # MX patterns (RFC 8461 section 4.1: "*." is exactly one label).
    world policy pattern.test 1 enforce '*.pattern.test'; world mx pattern.test mx1.pattern.test 127.0.0.2
    world cert mx1.pattern.test valid
    world policy deep.test    1 enforce '*.deep.test';    world mx deep.test a.b.deep.test 127.0.0.2
    world cert a.b.deep.test valid
}

# daemon_config FETCH_TIMEOUT: the start of $W/mta-stsd.toml every delivery script's
# daemon shares (socketmap on 127.0.0.1:8461, metrics on :9461, the world's DNS and
# CA, the cache in $W); a script appends its own sections.
daemon_config() {
    cat > "$W/mta-stsd.toml" <<CFG
[server]
listen = ["127.0.0.1:8461"]
[metrics]
listen = "127.0.0.1:9461"
[resolver]
nameservers = ["127.0.0.1:53"]
timeout = "1s"
[fetch]
ca_file = "$W/ca.pem"
# The test world's policy server is on loopback.
allow_private_addresses = true
timeout = "$1"
[cache]
path = "$W/mta-stsd-cache"
grace = "1s"
CFG
}

# policy_server_gone DOMAIN BIN_DIR: DOMAIN's policy server stops serving, its TXT id
# changes and its MX shows a certificate for another name; returns once the daemon
# (admin API on 127.0.0.1:9461) has tried the new id and recorded the fetch error
# ($W/cached.json holds its last answer).
policy_server_gone() {
    world down "$1"
    world txt "$1" 2
    world cert "mx.$1" wrong-name
    for _ in $(seq 1 100); do
        "$2/mta-stsd" cache refresh "$1" --admin http://127.0.0.1:9461 --json > "$W/cached.json" 2>/dev/null || true
        grep -q '"last_error": "' "$W/cached.json" && break
        sleep 0.1
    done
}

# world COMMAND...: one command to the test world (see mta-sts-testworld).
world() {
    echo "$*" >&"${WORLD[1]}"
    local reply
    read -r reply <&"${WORLD[0]}"
    [ "$reply" = ok ] || { echo "testworld: $* -> $reply" >&2; exit 1; }
}

# check NAME DESCRIPTION RESULT: one verdict line; RESULT "ok" or what went wrong.
check() {
    if [ "$3" = ok ]; then echo "ok   $1: $2"; else echo "FAIL $1: $2 ($3)"; failures=$((failures + 1)); fi
}

# wait_tcp HOST PORT: until something listens there (at most 10 s).
wait_tcp() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# sender_postfix EXTRA: a private Postfix instance in $W that sends as sender.test
# through mta-stsd on 127.0.0.1:8461, trusting the test world's CA: configuration in
# $W/etc (bind-mounted over $ROOT/etc/postfix), queue in $W/spool, log in $W/maillog,
# no chroot; EXTRA is appended to main.cf. The script defines `pf` (Postfix's commands,
# the host's or those of the Debian root $ROOT).
sender_postfix() {
    mkdir -p "$W/etc" "$W/spool" "$W/data"
    cp -a "$ROOT/etc/postfix/." "$W/etc/"
    cp "$ROOT/usr/share/postfix/master.cf.dist" "$W/etc/master.cf"
    pf chown postfix "$W/data"
    cat > "$W/etc/main.cf" <<CFG
compatibility_level = 3.6
queue_directory = $W/spool
data_directory = $W/data
myhostname = sender.test
mydomain = sender.test
myorigin = sender.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
maillog_file = $W/maillog
maillog_file_prefixes = /tmp
smtp_host_lookup = dns
smtp_tls_security_level = may
smtp_tls_CAfile = $W/ca.pem
smtp_tls_loglevel = 1
smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix
smtp_connect_timeout = 5s
delay_warning_time = 0
$1
CFG
    mount --bind "$W/etc" "$ROOT/etc/postfix"
    pf postconf -F '*/*/chroot = n'
    pf postconf -M postlog/unix-dgram="postlog unix-dgram n - n - 1 postlogd"
    pf postfix check >/dev/null
}

# start_unbound: Debian's unbound on 127.0.0.53, validating with $W/root.key (the
# signed world's trust anchor) and forwarding to the world's DNS on 127.0.0.1:53.
start_unbound() {
    cat > "$W/unbound.conf" <<UB
server:
    interface: 127.0.0.53
    port: 53
    do-ip6: no
    interface-automatic: no
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    username: ""
    chroot: ""
    directory: "$W"
    pidfile: "$W/unbound.pid"
    use-syslog: no
    logfile: "$W/unbound.log"
    verbosity: 1
    val-log-level: 2
    module-config: "validator iterator"
    trust-anchor-file: "$W/root.key"
    cache-max-ttl: 0
    cache-max-negative-ttl: 0
    local-zone: "test." nodefault
remote-control:
    control-enable: no
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@53
UB
    unbound -d -c "$W/unbound.conf" &
    pids+=($!)
    wait_tcp 127.0.0.53 53 || { echo "unbound did not start"; cat "$W/unbound.log"; exit 1; }
}

# world_resolver: the resolver the MTA in this namespace asks, bind-mounted over
# /etc/resolv.conf: with Debian's unbound installed (DANE=true), unbound on
# 127.0.0.53 validating for it (options trust-ad: the MTA trusts its AD bit; start it
# with start_unbound once the world runs, signed); without, the world's DNS.
world_resolver() {
    DANE=false
    command -v unbound >/dev/null && DANE=true
    if $DANE; then
        printf 'nameserver 127.0.0.53\noptions trust-ad\n' > "$W/resolv.conf"
    else
        echo "nameserver 127.0.0.1" > "$W/resolv.conf"
    fi
    mount --bind "$W/resolv.conf" /etc/resolv.conf
}

# share_with_root ROOT: the Debian root sees the work directory at the same path, this
# resolv.conf, and the kernel's /proc and /dev (mounts of this namespace only).
share_with_root() {
    mkdir -p "$1$W"
    mount --bind "$W" "$1$W"
    mount --bind "$W/resolv.conf" "$1/etc/resolv.conf"
    mount -t proc proc "$1/proc"
    mount --rbind /dev "$1/dev"
}
