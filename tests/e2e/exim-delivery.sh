#!/usr/bin/env bash
# End-to-end delivery test for Exim: Debian's exim4 (unpacked from its .debs, since
# the package conflicts with Postfix) delivers through mta-stsd with the shipped
# drop-ins (contrib/exim4/conf.d, concatenated in name order as update-exim4.conf
# does), inside a private network and mount namespace.
#
#   sudo tests/e2e/exim-delivery.sh EXIM_ROOT [BIN_DIR]
#   sudo tests/e2e/exim-delivery.sh --root DEBIAN_ROOT [BIN_DIR]
#
# EXIM_ROOT: a directory with this host's exim4-daemon-light, exim4-base and
# libidn12 unpacked (.ci/run makes target/ci-exim-4.96). --root DEBIAN_ROOT: a
# Debian root with exim4-daemon-light installed (e.g. trixie's, Exim 4.98), run under
# chroot in the same namespaces. BIN_DIR holds mta-stsd and mta-sts-testworld
# (default target/debug). The world is the one of postfix-delivery.sh: DNS on
# 127.0.0.1:53, the policy server on 127.0.0.1:443, receivers on 127.0.0.2:25
# (STARTTLS, certificate chosen by SNI), 127.0.0.3:25 (no STARTTLS), 127.0.0.4:25
# (STARTTLS, untrusted certificate when no SNI is sent), 127.0.0.5:25 (STARTTLS).
# Prints one line per case and exits non-zero if any case fails.
set -euo pipefail

ROOT=""
if [ "$1" = --root ]; then ROOT=$(realpath "$2"); shift 2; EXIM_ROOT=""; else EXIM_ROOT=$(realpath "$1"); shift; fi
BIN=$(realpath "${1:-target/debug}")
CONF_D=$(realpath "$(dirname "$0")/../../contrib/exim4/conf.d")

if [ "$(id -u)" != 0 ]; then echo "exim-delivery: needs root" >&2; exit 2; fi
if [ -z "${MTA_STS_E2E_NETNS:-}" ]; then
    exec env MTA_STS_E2E_NETNS=1 unshare --net --mount --propagation private "$0" \
        ${ROOT:+--root "$ROOT"} ${EXIM_ROOT:+"$EXIM_ROOT"} "$BIN"
fi

ip link set lo up
W=$(mktemp -d /tmp/mta-sts-exim.XXXXXX)
chmod 755 "$W"
. "$(dirname "$0")/lib.sh"
# With Debian's unbound installed the root zone is signed, unbound validates for Exim
# and the DANE cases run.
world_resolver
if [ -n "$ROOT" ]; then
    # Its exim4 package made its user.
    share_with_root "$ROOT"
    exim_uid=$(chroot "$ROOT" id -u Debian-exim)
    exim() { chroot "$ROOT" /usr/sbin/exim4 -C "$W/exim.conf" "$@"; }
else
    # Debian's exim binary needs its compiled-in user before it reads any configuration.
    cp /etc/passwd "$W/passwd"; cp /etc/group "$W/group"
    echo "Debian-exim:x:64999:64999::$W/spool:/usr/sbin/nologin" >> "$W/passwd"
    echo "Debian-exim:x:64999:" >> "$W/group"
    mount --bind "$W/passwd" /etc/passwd
    mount --bind "$W/group" /etc/group
    # It also re-executes itself as /usr/sbin/exim4 (setuid: the loader ignores
    # LD_LIBRARY_PATH) to deliver: the unpacked binary and its libidn12 appear where
    # Debian installs them (overlays, in this mount namespace only).
    mount -t overlay overlay -o "lowerdir=$EXIM_ROOT/usr/sbin:/usr/sbin" /usr/sbin
    mount -t overlay overlay -o "lowerdir=$EXIM_ROOT/usr/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" /usr/lib/x86_64-linux-gnu
    exim() { /usr/sbin/exim4 -C "$W/exim.conf" "$@"; }
    exim_uid=64999
fi
mkdir -p "$W/spool" "$W/log"
chown "$exim_uid:$exim_uid" "$W/spool" "$W/log"
trap stop_all EXIT

# --- the world ---------------------------------------------------------------------
signed=()
$DANE && signed=(--signed "$W/root.key")
start_world "$BIN" "${signed[@]}"
delivery_world
world policy verify.test 1 enforce mx.good.test; world mx verify.test mx.good.test 127.0.0.2
# The preferred MX is outside the policy (and has a valid certificate for its name).
world policy stranger.test 1 enforce '*.stranger.test'
world mx stranger.test mx.elsewhere.test 127.0.0.5 mx2.stranger.test 127.0.0.2
world cert mx.elsewhere.test valid; world cert mx2.stranger.test valid
if $DANE; then
    # An enforced MTA-STS policy (the certificate is valid for its names) and DANE
    # TLSA records: the TLSA record decides. (1) matches the certificate, (2) does
    # not; (3) the MX RRset is DNSSEC-bogus.
    world policy daneok.test   1 enforce mx.daneok.test;   world mx daneok.test mx.daneok.test 127.0.0.2
    world cert mx.daneok.test valid;   world tlsa mx.daneok.test match
    world policy danefail.test 1 enforce mx.danefail.test; world mx danefail.test mx.danefail.test 127.0.0.2
    world cert mx.danefail.test valid; world tlsa mx.danefail.test mismatch
    world policy bogus.test    1 enforce mx.bogus.test;    world mx bogus.test mx.bogus.test 127.0.0.2
    world cert mx.bogus.test valid;    world bogus bogus.test
    start_unbound
fi

# --- mta-stsd ----------------------------------------------------------------------
daemon_config 5s
cat >> "$W/mta-stsd.toml" <<CFG
[dane]
mode = "$($DANE && echo on || echo off)"
trust_anchor = "$W/root.key"
CFG
$DANE || sed -i '/^trust_anchor = /d' "$W/mta-stsd.toml"
"$BIN/mta-stsd" serve --config "$W/mta-stsd.toml" 2>"$W/mta-stsd.log" &
pids+=($!)
wait_tcp 127.0.0.1 8461 || { echo "mta-stsd did not start"; cat "$W/mta-stsd.log"; exit 1; }

# --- Exim, the sender: a hand-written main section, then the shipped drop-ins in the
# order update-exim4.conf concatenates them --------------------------------------------
{
    cat <<CFG
primary_hostname = sender.test
domainlist local_domains = sender.test
domainlist relay_to_domains =
spool_directory = $W/spool
log_file_path = $W/log/%slog
log_selector = +tls_sni +tls_certificate_verified +tls_peerdn +smtp_connection
keep_environment =
# The Debian configuration type these drop-ins apply to, and the test world: its
# receivers are on loopback, its CA is the Web PKI here.
DCconfig_internet = yes
ROUTER_DNSLOOKUP_IGNORE_TARGET_HOSTS = <; 0.0.0.0
MTA_STSD_CA = $W/ca.pem
# DNSSEC for Exim's DANE (the resolver validates; trust-ad passes its AD bit on).
dns_dnssec_ok = 1
CFG
    cat "$CONF_D/main/00_mta-stsd"
    echo "begin routers"
    cat "$CONF_D/router/190_mta-stsd"
    cat <<'CFG'
# Debian's dnslookup router (router/200_exim4-config_primary): everything else.
dnslookup:
  driver = dnslookup
  domains = ! +local_domains
  transport = remote_smtp
  same_domain_copy_routing = yes
  ignore_target_hosts = ROUTER_DNSLOOKUP_IGNORE_TARGET_HOSTS
  no_more
begin transports
CFG
    cat "$CONF_D/transport/30_mta-stsd"
    cat <<'CFG'
remote_smtp:
  driver = smtp
begin retry
*   *   F,1h,1h
CFG
} > "$W/exim.conf"
exim -bV > "$W/exim-version" 2>&1 || { echo "exim does not start:"; cat "$W/exim-version"; exit 1; }
echo "$(head -1 "$W/exim-version"), mta-stsd $("$BIN/mta-stsd" --version | cut -d' ' -f2)"

# --- the cases -----------------------------------------------------------------------
send() {  # send RCPT...: one message, delivered in the foreground
    printf 'Subject: mta-sts exim e2e\n\nhello\n' | exim -odf -f sender@sender.test "$@" || true
}
# The main log's delivery (=>) or deferral (==) line for RCPT.
line() { grep -F " $1 " "$W/log/mainlog" | grep -E "^[^ ]+ [^ ]+ [^ ]+ (=>|==|\*\*) $1 " | tail -1 || true; }
received() { ls "$W/received" | grep -c "^$1\..*\.eml$" || true; }
expect() {  # expect CASE RCPT sent|deferred RECEIVED PATTERN
    local name=$1 rcpt=$2 want=$3 want_rx=$4 pattern=$5
    local l got res=ok
    l=$(line "$rcpt")
    case "$l" in
        *" => $rcpt "*) got=sent ;;
        *" == $rcpt "*) got=deferred ;;
        *" ** $rcpt "*) got=bounced ;;
        *) got=none ;;
    esac
    [ "$got" = "$want" ] || res="status=$got"
    [ "$(received "$rcpt")" = "$want_rx" ] || res="$res received=$(received "$rcpt")"
    if [ -n "$pattern" ] && ! grep -qE "$pattern" <<<"$l"; then res="$res no /$pattern/ in: $l"; fi
    check "$name" "$want, $want_rx received" "$res"
}

send user@good.test
expect "enforce, valid certificate" user@good.test sent 1 "R=mta_stsd_secure T=mta_stsd_smtp H=mx.good.test .*CV=yes DN=\"CN=mx.good.test\""
# The receiver shows mx.sni.test's certificate only to a client that asks for it by
# SNI (without, CN=default.mx.invalid): verified means Exim sent SNI = the MX name.
send user@sni.test
expect "enforce, SNI = MX host name" user@sni.test sent 1 "T=mta_stsd_smtp H=mx.sni.test .*CV=yes DN=\"CN=mx.sni.test\""
send user@badcert.test
expect "enforce, certificate for another name" user@badcert.test deferred 0 "R=mta_stsd_secure T=mta_stsd_smtp"
send user@notls.test
expect "enforce, receiver without STARTTLS" user@notls.test deferred 0 "R=mta_stsd_secure T=mta_stsd_smtp"
send user@testing.test
expect "testing mode, bad certificate" user@testing.test sent 1 "R=dnslookup T=remote_smtp"
send user@plain.test
expect "no policy, as before" user@plain.test sent 1 "R=dnslookup T=remote_smtp"
send user@pattern.test
expect "MX pattern *.pattern.test, MX mx1.pattern.test" user@pattern.test sent 1 "H=mx1.pattern.test .*CV=yes"
send user@deep.test
expect "MX pattern *.deep.test, MX a.b.deep.test (two labels)" user@deep.test deferred 0 "R=mta_stsd_secure T=mta_stsd_smtp defer \(-58\)"
send user@stranger.test
expect "MX outside the policy is not used" user@stranger.test sent 1 "H=mx2.stranger.test .*CV=yes"
if grep -q "SMTP connection outbound.*mx.elsewhere.test\|H=mx.elsewhere.test.*X=TLS" "$W/log/mainlog"; then
    check "MX outside the policy is not used" "no TLS session with mx.elsewhere.test" "$(grep mx.elsewhere.test "$W/log/mainlog" | head -3)"
else
    check "MX outside the policy is not used" "no TLS session with mx.elsewhere.test" ok
fi
# One message to two domains: each gets its own answer and its own connection.
send multi@good.test multi@plain.test
expect "two domains in one message: the enforced one" multi@good.test sent 1 "R=mta_stsd_secure T=mta_stsd_smtp .*CV=yes"
expect "two domains in one message: the other as before" multi@plain.test sent 1 "R=dnslookup T=remote_smtp"
# Address verification does not ask the daemon: the MTA-STS routers are no_verify, so
# their debug_print lines never show.
exim -d+route -bv user@verify.test > "$W/verify.out" 2>&1 || true
if grep -q "R: mta_stsd_" "$W/verify.out"; then
    check "address verification" "the MTA-STS routers are skipped" "$(grep 'R: mta_stsd_' "$W/verify.out" | head -2)"
else
    check "address verification" "the MTA-STS routers are skipped" ok
fi

if $DANE; then
    send user@daneok.test
    expect "DANE and MTA-STS both published, TLSA matches: Exim's DANE" user@daneok.test sent 1 "R=mta_stsd_dane T=mta_stsd_dane_smtp H=mx.daneok.test .*CV=dane"
    send user@danefail.test
    expect "DANE and MTA-STS both published, TLSA does not match: deferred by DANE" user@danefail.test deferred 0 "R=mta_stsd_dane T=mta_stsd_dane_smtp"
    send user@bogus.test
    expect "DNSSEC-bogus MX: deferred, not delivered by MTA-STS" user@bogus.test deferred 0 "R=mta_stsd_defer defer \(-1\): MTA-STS: "
else
    echo "skip DANE cases: unbound is not installed"
fi

# Cached policy: the policy server goes down and the receiver shows a bad certificate.
send user@cached.test
expect "enforce before the policy server goes down" user@cached.test sent 1 "T=mta_stsd_smtp .*CV=yes"
policy_server_gone cached.test "$BIN"
send user2@cached.test
expect "policy server down: still enforced from cache" user2@cached.test deferred 0 "R=mta_stsd_secure"

# The daemon down: defer, never downgrade.
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
send late@good.test
expect "mta-stsd down: deferred, not sent without MTA-STS" late@good.test deferred 0 "mta-stsd did not answer"

echo
if [ "$failures" -gt 0 ]; then
    echo "--- exim mainlog"; cat "$W/log/mainlog" 2>/dev/null || true
    echo "--- exim paniclog"; cat "$W/log/paniclog" 2>/dev/null || true
    echo "--- mta-stsd log (tail)"; tail -n 20 "$W/mta-stsd.log"
    echo "exim-delivery: $failures case(s) failed"
    exit 1
fi
echo "exim-delivery: all cases passed"
