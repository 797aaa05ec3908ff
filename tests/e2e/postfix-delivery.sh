#!/usr/bin/env bash
# End-to-end delivery test: real Postfix sends through real mta-stsd to receiving SMTP
# servers, inside a private network and mount namespace (nothing outside is touched).
#
#   sudo tests/e2e/postfix-delivery.sh [--tlsrpt] [--root DIR] [BIN_DIR]
#
# BIN_DIR holds mta-stsd and mta-sts-testworld (default target/debug; build them with
# `cargo build --workspace --bins`). Needs root and Debian's postfix. --tlsrpt turns on
# the TLSRPT attributes (Postfix >= 3.10). --root DIR runs the Postfix installed in the
# Debian root DIR (e.g. `debootstrap trixie DIR` for Postfix 3.10.13) under chroot,
# inside the same namespaces; the world and mta-stsd stay outside. Prints one line per
# case and exits non-zero if any case fails. With Debian's unbound installed, the root
# zone is signed, unbound (127.0.0.53) validates for Postfix (smtp_dns_support_level =
# dnssec, options trust-ad) and the DANE cases run: DANE must take precedence over an
# enforced MTA-STS policy. The world: a DNS server on 127.0.0.1:53 and the policy server on
# 127.0.0.1:443 (mta-sts-testworld, test CA made at start), SMTP receivers on
# 127.0.0.2:25 (STARTTLS, certificate chosen by SNI), 127.0.0.3:25 (no STARTTLS) and
# 127.0.0.4:25 (STARTTLS, untrusted certificate when no SNI is sent),
# Postfix as the sender with the test CA as trust anchor, mta-stsd on 127.0.0.1:8461.
set -euo pipefail

TLSRPT=false
ROOT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --tlsrpt) TLSRPT=true; shift ;;
        --root) ROOT=$(realpath "$2"); shift 2 ;;
        *) break ;;
    esac
done
BIN=$(realpath "${1:-target/debug}")

if [ "$(id -u)" != 0 ]; then echo "postfix-delivery: needs root" >&2; exit 2; fi
if [ -z "${MTA_STS_E2E_NETNS:-}" ]; then
    exec env MTA_STS_E2E_NETNS=1 unshare --net --mount --propagation private "$0" \
        $($TLSRPT && echo --tlsrpt) ${ROOT:+--root "$ROOT"} "$BIN"
fi

# Postfix's commands: the host's, or those of the Debian root under chroot.
pf() { if [ -n "$ROOT" ]; then chroot "$ROOT" "$@"; else "$@"; fi; }

ip link set lo up
W=$(mktemp -d /tmp/mta-sts-e2e.XXXXXX)
chmod 755 "$W"
. "$(dirname "$0")/lib.sh"
# Postfix asks the validating resolver, if there is one (DANE=true).
world_resolver
if [ -n "$ROOT" ]; then share_with_root "$ROOT"; fi
before_stop() { pf postfix stop >/dev/null 2>&1 || true; }
trap stop_all EXIT

# --- the world: DNS, policy server, receivers ------------------------------------
signed=()
$DANE && signed=(--signed "$W/root.key")
start_world "$BIN" "${signed[@]}"
delivery_world
# No policy, but a receiver whose certificate is valid for its name.
                                                      world mx nopolicy.test mx.nopolicy.test 127.0.0.2; world cert mx.nopolicy.test valid
# The preferred MX is outside the policy (and has a valid certificate for its name).
world policy stranger.test 1 enforce '*.stranger.test'
world mx stranger.test mx.elsewhere.test 127.0.0.5 mx2.stranger.test 127.0.0.2
world cert mx.elsewhere.test valid; world cert mx2.stranger.test valid
if $DANE; then
    # Both an enforced MTA-STS policy (the certificate is valid for its names) and
    # DANE TLSA records: the TLSA record decides. (1) does not match the certificate,
    # (2) does.
    world policy danefail.test 1 enforce mx.danefail.test; world mx danefail.test mx.danefail.test 127.0.0.2
    world cert mx.danefail.test valid; world tlsa mx.danefail.test mismatch
    world policy daneok.test   1 enforce mx.daneok.test;   world mx daneok.test mx.daneok.test 127.0.0.2
    world cert mx.daneok.test valid;   world tlsa mx.daneok.test match

    # unbound validates for Postfix, forwarding to the world's signed DNS.
    start_unbound
fi

# --- mta-stsd ---------------------------------------------------------------------
daemon_config 5s
cat >> "$W/mta-stsd.toml" <<CFG
[log]
level = "info,mta_stsd=debug"
format = "plain"
[dane]
# auto: on exactly when this Postfix validates DNSSEC (read with its own postconf).
mode = "auto"
postfix_config = "$W/etc"
trust_anchor = "$W/root.key"
[zones.default]
tlsrpt = $TLSRPT
CFG
$DANE || sed -i '/^trust_anchor = /d' "$W/mta-stsd.toml"

# --- Postfix, the sender ----------------------------------------------------------
sender_postfix "smtp_dns_support_level = $($DANE && echo dnssec || echo enabled)
bounce_queue_lifetime = 1d
maximal_queue_lifetime = 1d"
pf postfix start >/dev/null 2>&1
pf postconf -h mail_version > "$W/postfix-version"
# mta-stsd starts after Postfix's configuration exists: dane.mode = "auto" reads it.
"$BIN/mta-stsd" serve --config "$W/mta-stsd.toml" 2>"$W/mta-stsd.log" &
pids+=($!)
wait_tcp 127.0.0.1 8461 || { echo "mta-stsd did not start"; cat "$W/mta-stsd.log"; exit 1; }
echo "Postfix $(cat "$W/postfix-version"), mta-stsd $("$BIN/mta-stsd" --version | cut -d' ' -f2), tlsrpt=$TLSRPT, dane=$DANE"

# --- the cases --------------------------------------------------------------------
send() {  # send RCPT
    printf 'Subject: mta-sts e2e to %s\n\nhello\n' "$1" | pf sendmail -f sender@sender.test "$1"
}
# Waits for Postfix's verdict on RCPT (sent, deferred, bounced) and prints it.
verdict() {
    local rcpt=$1 n=${2:-1} v=""
    for _ in $(seq 1 300); do
        v=$(grep -F "to=<$rcpt>" "$W/maillog" 2>/dev/null | grep -oE 'status=(sent|deferred|bounced)' | sed -n "${n}p" | cut -d= -f2)
        [ -n "$v" ] && break
        sleep 0.1
    done
    echo "${v:-none}"
}
received() { ls "$W/received" | grep -c "^$1\..*\.eml$" || true; }
expect() {  # expect CASE RCPT VERDICT RECEIVED LOGPATTERN [n]
    local name=$1 rcpt=$2 want=$3 want_rx=$4 pattern=$5 n=${6:-1}
    local got rx
    got=$(verdict "$rcpt" "$n")
    rx=$(received "$rcpt")
    local res=ok
    [ "$got" = "$want" ] || res="status=$got"
    [ "$rx" = "$want_rx" ] || res="$res received=$rx"
    # The pattern must be on this message's status line, or name this case's MX host.
    if [ -n "$pattern" ] && ! grep -F "to=<$rcpt>" "$W/maillog" | sed -n "${n}p" | grep -qE "$pattern" \
        && ! { [[ "$pattern" == *"connection established to "* ]] && grep -qE "$pattern" "$W/maillog"; }; then
        res="$res no log line /$pattern/"
    fi
    check "$name" "$want, $want_rx received" "$res"
}

logged() {  # logged NAME DESCRIPTION PATTERN: PATTERN is in the mail log
    if grep -qF "$3" "$W/maillog"; then check "$1" "$2" ok; else check "$1" "$2" "no log line: $3"; fi
}

send user@good.test;    expect "enforce, valid certificate" user@good.test sent 1 "Verified TLS connection established to mx.good.test"
send user@badcert.test; expect "enforce, certificate for another name" user@badcert.test deferred 0 "server certificate verification failed|Server certificate not verified"
send user@notls.test;   expect "enforce, receiver without STARTTLS" user@notls.test deferred 0 "TLS is required, but was not offered"
send user@testing.test; expect "testing mode, bad certificate" user@testing.test sent 1 "Untrusted TLS connection established to mx.testing.test"
send user@plain.test;   expect "no policy, opportunistic TLS" user@plain.test sent 1 "Untrusted TLS connection established to mx.plain.test"

# Cached policy: fetched once, then the policy server goes down and the id changes;
# the receiver now shows a bad certificate. Still enforced => deferred, not delivered.
send user@cached.test;  expect "enforce before the policy server goes down" user@cached.test sent 1 "Verified TLS connection established to mx.cached.test"
# Let the daemon see the new id and fail to fetch it (after grace), via its admin API.
policy_server_gone cached.test "$BIN"
grep -q '"state": "enforce"' "$W/cached.json" && grep -q '"last_error": "' "$W/cached.json" \
    && check "policy server down" "cached policy kept, fetch error recorded" ok \
    || check "policy server down" "cached policy kept, fetch error recorded" "$(cat "$W/cached.json")"
send user2@cached.test; expect "policy server down: still enforced from cache" user2@cached.test deferred 0 "server certificate verification failed|Server certificate not verified"

# MX patterns. Postfix >= 3.10.5 with the TLSRPT attributes enforces the policy's
# mx_host_pattern values itself (smtp_tls_enforce_sts_mx_patterns = yes, its default):
# it connects only to MX hosts that match, with "*." standing for exactly one label.
# Older versions, or no attributes, get only match=.deep.test, which allows any depth.
version=$(cat "$W/postfix-version")
if $TLSRPT && [ "$(printf '%s\n' 3.10.5 "$version" | sort -V | head -n1)" = 3.10.5 ]; then
    send user@pattern.test
    expect "MX pattern *.pattern.test, MX mx1.pattern.test" user@pattern.test sent 1 "Verified TLS connection established to mx1.pattern.test"
    send user@deep.test
    expect "MX pattern *.deep.test, MX a.b.deep.test (two labels)" user@deep.test deferred 0 ""
    logged "MX pattern *.deep.test, MX a.b.deep.test (two labels)" "Postfix logs the mismatch" \
        "MX name 'a.b.deep.test' does not match STS MX pattern"
    send user@stranger.test
    expect "MX outside the policy is not used" user@stranger.test sent 1 "Verified TLS connection established to mx2.stranger.test"
    logged "MX outside the policy is not used" "Postfix logs the mismatch" \
        "MX name 'mx.elsewhere.test' does not match STS MX pattern"
    if grep -q "connection established to mx.elsewhere.test" "$W/maillog"; then
        check "MX outside the policy is not used" "no TLS connection to mx.elsewhere.test" "connected"
    else
        check "MX outside the policy is not used" "no TLS connection to mx.elsewhere.test" ok
    fi
    got=$(pf postmap -q deep.test socketmap:inet:127.0.0.1:8461:postfix || true)
    case "$got" in
        *"match=.deep.test "*"mx_host_pattern=*.deep.test "*"{ policy_string = mx: *.deep.test }"*)
            check "MX patterns reach Postfix verbatim" "mx_host_pattern=*.deep.test" ok ;;
        *) check "MX patterns reach Postfix verbatim" "mx_host_pattern=*.deep.test" "got: $got" ;;
    esac
else
    send user@deep.test
    expect "match=.deep.test (no MX patterns in Postfix $version): a.b.deep.test accepted" user@deep.test sent 1 "Verified TLS connection established to a.b.deep.test"
fi

# REQUIRETLS (RFC 8689, Postfix >= 3.11): a message sent with it may leave only over
# a connection whose policy authenticates the server, which for MTA-STS is the
# daemon's "secure" answer with the policy's match list. With no policy the same
# receiver (valid certificate, REQUIRETLS announced after STARTTLS) is refused:
# Postfix's default smtp_requiretls_policy is "enforce" for other domains.
if [ "$(printf '%s\n' 3.11 "$version" | sort -V | head -n1)" = 3.11 ]; then
    send_requiretls() {
        printf 'Subject: REQUIRETLS to %s\n\nhello\n' "$1" \
            | pf sendmail -O requiretls=yes -f sender@sender.test "$1"
    }
    send_requiretls rt@good.test
    expect "REQUIRETLS, enforced MTA-STS policy" rt@good.test sent 1 "tls=secure/requiretls"
    if grep -q 'REQUIRETLS' "$W/received/"rt@good.test.*.mail 2>/dev/null; then
        check "REQUIRETLS, enforced MTA-STS policy" "the receiver was asked for REQUIRETLS" ok
    else
        check "REQUIRETLS, enforced MTA-STS policy" "the receiver was asked for REQUIRETLS" "$(cat "$W/received/"rt@good.test.*.mail 2>/dev/null)"
    fi
    send_requiretls rt@nopolicy.test
    expect "REQUIRETLS, no policy (valid certificate)" rt@nopolicy.test bounced 0 "!requiretls"
else
    echo "skip REQUIRETLS cases: Postfix $version < 3.11"
fi

if $DANE; then
    # auto picked DANE precedence from Postfix's own smtp_dns_support_level.
    if grep -q 'DANE precedence on=true' "$W/mta-stsd.log"; then
        check "dane.mode = auto" "on, read from Postfix (dnssec)" ok
    else
        check "dane.mode = auto" "on, read from Postfix (dnssec)" "$(grep 'DANE precedence' "$W/mta-stsd.log")"
    fi
    got=$(pf postmap -q daneok.test socketmap:inet:127.0.0.1:8461:postfix || true)
    [ "$got" = "dane-only" ] && check "DANE and MTA-STS both published" "answer dane-only" ok \
        || check "DANE and MTA-STS both published" "answer dane-only" "got: $got"
    send user@danefail.test
    expect "DANE: TLSA does not match a Web-PKI-valid certificate" user@danefail.test deferred 0 ""
    logged "DANE: TLSA does not match a Web-PKI-valid certificate" "Postfix's DANE judged it" \
        "mx.danefail.test[127.0.0.2]:25: num=65:no matching DANE TLSA records"
    send user@daneok.test
    expect "DANE: TLSA matches" user@daneok.test sent 1 "Verified TLS connection established to mx.daneok.test"
else
    echo "skip DANE cases: unbound is not installed"
fi

# Postfix must accept every answer the daemon gave.
if grep -qiE "invalid attribute|malformed|table .*lookup error|socketmap.*(error|unexpected)" "$W/maillog"; then
    check "Postfix accepted every answer" "no policy-map errors in the log" "$(grep -iE 'invalid attribute|malformed|lookup error' "$W/maillog" | head -3)"
else
    check "Postfix accepted every answer" "no policy-map errors in the log" ok
fi
if $TLSRPT; then
    got=$(pf postmap -q good.test socketmap:inet:127.0.0.1:8461:postfix || true)
    want="secure match=mx.good.test servername=hostname policy_type=sts policy_domain=good.test mx_host_pattern=mx.good.test { policy_string = version: STSv1 } { policy_string = mode: enforce } { policy_string = mx: mx.good.test } { policy_string = max_age: 86400 }"
    [ "$got" = "$want" ] && check "TLSRPT attributes" "exact answer via postmap -q" ok \
        || check "TLSRPT attributes" "exact answer via postmap -q" "got: $got"
fi

echo
if [ "$failures" -gt 0 ]; then
    echo "--- maillog"; cat "$W/maillog"
    echo "--- mta-stsd log (tail)"; tail -n 40 "$W/mta-stsd.log"
    echo "postfix-delivery: $failures case(s) failed"
    exit 1
fi
echo "postfix-delivery: all cases passed"
