#!/usr/bin/env bash
# End-to-end delivery test for Sendmail: Debian's sendmail (FEATURE(`sts'), which asks
# a socketmap server "sts DOMAIN" for Postfix-style answers) delivers through mta-stsd,
# inside a private network, mount and UTS namespace.
#
#   sudo tests/e2e/sendmail-delivery.sh SENDMAIL_ROOT [BIN_DIR]
#   sudo tests/e2e/sendmail-delivery.sh --root DEBIAN_ROOT [BIN_DIR]
#
# SENDMAIL_ROOT: a directory with this host's sendmail-bin, sendmail-base, sendmail-cf
# and libwrap0 unpacked (.ci/run makes target/ci-sendmail-8.17); it is laid over /usr
# in the mount namespace. --root DEBIAN_ROOT: a Debian root with sendmail-bin and
# sendmail-cf installed (e.g. trixie's, Sendmail 8.18), run under chroot. BIN_DIR holds
# mta-stsd and mta-sts-testworld (default target/debug). The world is the one of
# postfix-delivery.sh: DNS on 127.0.0.1:53, the policy server on 127.0.0.1:443,
# receivers on 127.0.0.2:25 (STARTTLS, certificate chosen by SNI), 127.0.0.3:25 (no
# STARTTLS), 127.0.0.4:25 (STARTTLS, untrusted certificate when no SNI is sent),
# 127.0.0.5:25 (STARTTLS).
#
# Sendmail logs only to syslog: the script gives it a /dev/log of its own (a tmpfs
# /dev in the mount namespace) and reads the lines from there.
# Prints one line per case and exits non-zero if any case fails.
set -euo pipefail

ROOT=""
if [ "$1" = --root ]; then ROOT=$(realpath "$2"); shift 2; SM_ROOT=""; else SM_ROOT=$(realpath "$1"); shift; fi
BIN=$(realpath "${1:-target/debug}")

if [ "$(id -u)" != 0 ]; then echo "sendmail-delivery: needs root" >&2; exit 2; fi
if [ -z "${MTA_STS_E2E_NETNS:-}" ]; then
    exec env MTA_STS_E2E_NETNS=1 unshare --net --mount --uts --propagation private "$0" \
        ${ROOT:+--root "$ROOT"} ${SM_ROOT:+"$SM_ROOT"} "$BIN"
fi

ip link set lo up
# Sendmail waits a minute for a host name it cannot qualify; this one is qualified.
hostname sender.test
# Not under /tmp: Sendmail refuses a CA file in a world-writable directory path.
W=$(mktemp -d /run/mta-sts-sendmail.XXXXXX)
chmod 755 "$W"
. "$(dirname "$0")/lib.sh"
# Sendmail's FEATURE(sts) never asks for DANE answers: the world's plain DNS serves it.
echo "nameserver 127.0.0.1" > "$W/resolv.conf"
mount --bind "$W/resolv.conf" /etc/resolv.conf

# A /dev of Sendmail's own, with a syslog socket: a tmpfs with the few device nodes a
# process needs, moved over ROOT/dev (or /dev) in this mount namespace only.
mkdir "$W/dev"
mount -t tmpfs -o mode=755 tmpfs "$W/dev"
for n in null zero full random urandom tty; do
    touch "$W/dev/$n"
    mount --bind "/dev/$n" "$W/dev/$n"
done
ln -s /proc/self/fd "$W/dev/fd"
for i in 0 1 2; do ln -s "/proc/self/fd/$i" "$W/dev/$(echo stdin stdout stderr | cut -d' ' -f$((i + 1)))"; done
if [ -n "$ROOT" ]; then
    share_with_root "$ROOT"
    mount --move "$W/dev" "$ROOT/dev"
    sendmail() { chroot "$ROOT" /usr/libexec/sendmail/sendmail -C "$W/sendmail.cf" "$@"; }
    build_cf() { chroot "$ROOT" m4 -D_CF_DIR_=/usr/share/sendmail/cf/ /usr/share/sendmail/cf/m4/cf.m4 "$W/sendmail.mc"; }
else
    mount --move "$W/dev" /dev
    # The unpacked packages appear where Debian installs them (an overlay, in this
    # mount namespace only): the sendmail binary is setgid, so the loader finds
    # libwrap0 only in the system's library directory.
    mount -t overlay overlay -o "lowerdir=$SM_ROOT/usr:/usr" /usr
    sendmail() { /usr/libexec/sendmail/sendmail -C "$W/sendmail.cf" "$@"; }
    build_cf() { m4 -D_CF_DIR_=/usr/share/sendmail/cf/ /usr/share/sendmail/cf/m4/cf.m4 "$W/sendmail.mc"; }
fi
# syslog: one datagram per line into $W/syslog.
python3 -c '
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o666)
out = open(sys.argv[2], "ab", buffering=0)
print("ready", flush=True)
while True:
    out.write(s.recv(65536).rstrip(b"\n") + b"\n")
' "$ROOT/dev/log" "$W/syslog" > "$W/syslog.ready" &
pids+=($!)
for _ in $(seq 100); do [ -s "$W/syslog.ready" ] && break; sleep 0.1; done
trap stop_all EXIT

# --- the world ---------------------------------------------------------------------
start_world "$BIN"
delivery_world
# The only MX is outside the policy (its certificate is valid for its name).
world policy stranger.test 1 enforce '*.stranger.test'; world mx stranger.test mx.elsewhere.test 127.0.0.5
world cert mx.elsewhere.test valid
# A policy server that never answers: the daemon's lookup outlasts Sendmail's wait.
world hang slow.test 1; world mx slow.test mx.slow.test 127.0.0.2; world cert mx.slow.test valid
world hang slower.test 1; world mx slower.test mx.slower.test 127.0.0.2; world cert mx.slower.test valid

# --- mta-stsd, on its defaults for the "sts" zone (deadline 4 s, no DANE) -------------
daemon_config 10s
cat >> "$W/mta-stsd.toml" <<CFG
[dane]
mode = "off"
CFG
"$BIN/mta-stsd" serve --config "$W/mta-stsd.toml" 2>"$W/mta-stsd.log" &
pids+=($!)
wait_tcp 127.0.0.1 8461 || { echo "mta-stsd did not start"; cat "$W/mta-stsd.log"; exit 1; }

# --- Sendmail, the sender: the FEATURE line docs/sendmail.md shows, with the daemon
# on its default address -----------------------------------------------------------
mkdir -m 700 "$W/mqueue"
touch "$W/aliases" "$W/statistics"
cat > "$W/sendmail.mc" <<MC
divert(0)dnl
OSTYPE(\`linux')dnl
define(\`confDOMAIN_NAME', \`sender.test')dnl
define(\`QUEUE_DIR', \`$W/mqueue')dnl
define(\`ALIAS_FILE', \`$W/aliases')dnl
define(\`STATUS_FILE', \`$W/statistics')dnl
define(\`confDONT_PROBE_INTERFACES', \`True')dnl
dnl LogLevel 14: the STARTTLS lines with the peer certificate's subject.
define(\`confLOG_LEVEL', \`14')dnl
dnl The test world's CA is the Web PKI here.
define(\`confCACERT', \`$W/ca.pem')dnl
define(\`confCACERT_PATH', \`$W/certs')dnl
define(\`confTO_CONNECT', \`5s')dnl
FEATURE(\`sts', \`socket -d5 -T<TMPF> inet:8461@127.0.0.1')dnl
MAILER(\`smtp')dnl
MC
mkdir "$W/certs"
build_cf > "$W/sendmail.cf"
version=$(sendmail -d0.1 -bt < /dev/null 2>&1 | sed -n 's/^Version //p' | head -1)
[ -n "$version" ] || { echo "sendmail does not start:"; sendmail -d0.1 -bt < /dev/null 2>&1 | head; exit 1; }
echo "Sendmail $version, mta-stsd $("$BIN/mta-stsd" --version | cut -d' ' -f2)"

# --- the cases -----------------------------------------------------------------------
send() {  # send RCPT...: one message, delivered in the foreground
    printf 'Subject: mta-sts sendmail e2e\n\nhello\n' | sendmail -odi -oi -f sender@sender.test "$@" || true
}
# The log lines of the process that last delivered to RCPT (the STARTTLS lines carry
# no queue id; -odi delivers in the process that took the message).
pid() { grep -E "to=<?$1>?," "$W/syslog" | tail -1 | sed -E 's/.* sendmail\[([0-9]+)\]: .*/\1/'; }
lines() { local p; p=$(pid "$1"); [ -n "$p" ] && grep -F " sendmail[$p]: " "$W/syslog" || true; }
received() { ls "$W/received" | grep -c "^$1\..*\.eml$" || true; }
expect() {  # expect CASE RCPT sent|deferred RECEIVED PATTERN
    local name=$1 rcpt=$2 want=$3 want_rx=$4 pattern=$5
    local l got res=ok
    l=$(lines "$rcpt")
    case "$(grep -E "to=<?$rcpt>?," <<<"$l" | tail -1)" in
        *"stat=Sent"*) got=sent ;;
        *"stat=Deferred"*) got=deferred ;;
        *"dsn=5"*) got=bounced ;;
        *) got=none ;;
    esac
    [ "$got" = "$want" ] || res="status=$got"
    [ "$(received "$rcpt")" = "$want_rx" ] || res="$res received=$(received "$rcpt")"
    if [ -n "$pattern" ] && ! grep -qE "$pattern" <<<"$l"; then res="$res no /$pattern/ in: $(tail -3 <<<"$l")"; fi
    check "$name" "$want, $want_rx received" "$res"
}
VERIFIED='STARTTLS=client, relay=%s\.?, version=TLSv1\.[23], verify=OK'

# What docs/sendmail.md tells an administrator to look at: Sendmail's own map lookup.
map=$(echo '/map sts good.test' | sendmail -bt 2>&1 | grep 'map_lookup' || true)
if grep -q 'returns secure match=mx.good.test servername=hostname' <<<"$map"; then res=ok; else res="$map"; fi
check "sendmail -bt: /map sts good.test" "Sendmail's map returns the daemon's answer" "$res"

send user@good.test
expect "enforce, valid certificate" user@good.test sent 1 "$(printf "$VERIFIED" mx.good.test)"
# The receiver shows mx.sni.test's certificate only to a client that asks for it by
# SNI: verify=OK means Sendmail sent SNI = the MX name.
send user@sni.test
expect "enforce, SNI = MX host name" user@sni.test sent 1 "$(printf "$VERIFIED" mx.sni.test)"
send user@badcert.test
expect "enforce, certificate for another name" user@badcert.test deferred 0 "reject=450 4.7.0 user@badcert.test... mx.badcert.test not listed in SANs"
send user@notls.test
expect "enforce, receiver without STARTTLS" user@notls.test deferred 0 "stat=Deferred"
send user@testing.test
expect "testing mode, bad certificate" user@testing.test sent 1 "verify=FAIL"
send user@plain.test
expect "no policy, as before" user@plain.test sent 1 "verify=FAIL"
send user@pattern.test
expect "MX pattern *.pattern.test, MX mx1.pattern.test" user@pattern.test sent 1 "$(printf "$VERIFIED" mx1.pattern.test)"
send user@deep.test
expect "MX pattern *.deep.test, MX a.b.deep.test (two labels)" user@deep.test deferred 0 "reject=450 4.7.0 user@deep.test... a.b.deep.test not found in .deep.test"
send user@stranger.test
expect "MX outside the policy: refused before RCPT" user@stranger.test deferred 0 "reject=450 4.7.0 user@stranger.test... mx.elsewhere.test not found in .stranger.test"

# A first contact whose discovery outlasts Sendmail's 5 s map timeout: the "sts" zone
# answers NOTFOUND within its 4 s deadline, so Sendmail delivers as for any first
# contact (STARTTLS, opportunistic) instead of timing out.
start=$(date +%s%N)
send user@slow.test
took=$(( ($(date +%s%N) - start) / 1000000 ))
expect "discovery hangs: answered within the zone's deadline" user@slow.test sent 1 "$(printf 'STARTTLS=client, relay=%s\\.?, version=TLSv1' mx.slow.test)"
if grep -q "timeout\|timed out" <<<"$(lines user@slow.test)"; then
    check "discovery hangs: no map timeout" "Sendmail's socket map did not time out" "$(grep -i 'timeout\|timed out' <<<"$(lines user@slow.test)" | head -2)"
else
    check "discovery hangs: no map timeout" "Sendmail's socket map did not time out (delivery took ${took} ms)" ok
fi

# What the 4 s default guards against: a Sendmail whose map gives up before the
# daemon answers (-d1, one second, against the same daemon) logs a SYSERR and defers
# the message (4.7.0, "STS lookup temp fail") until a later queue run.
sed -i 's/socket -d5 /socket -d1 /' "$W/sendmail.mc" && build_cf > "$W/sendmail.cf"
send user@slower.test
expect "Sendmail's map times out first: deferred, not downgraded" user@slower.test deferred 0 "socket_map_lookup\(sts\): read timeout"
sed -i 's/socket -d1 /socket -d5 /' "$W/sendmail.mc" && build_cf > "$W/sendmail.cf"

# Cached policy: the policy server goes down and the receiver shows a bad certificate.
send user@cached.test
expect "enforce before the policy server goes down" user@cached.test sent 1 "$(printf "$VERIFIED" mx.cached.test)"
policy_server_gone cached.test "$BIN"
send user2@cached.test
expect "policy server down: still enforced from cache" user2@cached.test deferred 0 "not listed in SANs"

# Sendmail asks the map more than once per delivery (STARTTLS, SNI, each RCPT): count
# what the daemon saw for one message.
lookups() {  # the daemon's lookups so far (its metrics)
    python3 -c 'import urllib.request as u; print(u.build_opener(u.ProxyHandler({})).open("http://127.0.0.1:9461/metrics").read().decode())' |
        awk '/^mta_stsd_lookups_total/ {s += $2} END {print s + 0}' || true
}
before=$(lookups)
send count@good.test
after=$(lookups)
echo "     (one message to good.test: $((after - before)) lookups)"

# The daemon down: the map fails, Sendmail's <TMPF> rule defers (never a downgrade).
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
send late@good.test
expect "mta-stsd down: deferred, not sent without MTA-STS" late@good.test deferred 0 "stat=Deferred: 450 4.7.0 late@good.test... STS lookup temp fail"

echo
if [ "$failures" -gt 0 ]; then
    echo "--- syslog"; cat "$W/syslog" 2>/dev/null || true
    echo "--- mta-stsd log (tail)"; tail -n 20 "$W/mta-stsd.log"
    echo "sendmail-delivery: $failures case(s) failed"
    exit 1
fi
echo "sendmail-delivery: all cases passed"
