#!/usr/bin/env bash
# TLSRPT end to end: Postfix >= 3.10 built with libtlsrpt (Debian trixie's 3.10.13, run
# from a Debian root under chroot) delivers to the test world's receivers with
# smtp_tlsrpt_enable = yes; mta-stsd collects its datagrams and sends the RFC 8460
# reports, by HTTPS to the world's report host and by mail through that same Postfix.
# sys4's tlsrpt-reporter (its tlsrpt-collectd, the reference collector) then receives
# the datagrams of the same deliveries, and its counts must equal mta-stsd's, domain
# by domain. Last, no report loop: the mailed report, submitted by SMTP to that
# Postfix and delivered to a domain that asks for TLS reports, adds no session to the
# collector (Postfix 3.10: with the README's recipe, a transport without TLSRPT for
# the report sender; Postfix 3.11: by itself, for a message with "TLS-Required: No").
#
#   sudo tests/e2e/tlsrpt-reports.sh --root DIR --venv VENV [BIN_DIR]
#
# DIR: a Debian trixie root with postfix (debootstrap); VENV: a Python venv with
# tlsrpt-reporter installed (pip install tlsrpt-reporter==0.6.0); BIN_DIR holds
# mta-stsd and mta-sts-testworld (default target/debug). Runs inside a private network
# and mount namespace; prints one line per case; exits non-zero if any case fails.
set -euo pipefail

ROOT=""
VENV=""
while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=$(realpath "$2"); shift 2 ;;
        --venv) VENV=$(realpath "$2"); shift 2 ;;
        *) break ;;
    esac
done
BIN=$(realpath "${1:-target/debug}")
[ -n "$ROOT" ] && [ -n "$VENV" ] || { echo "usage: $0 --root DIR --venv VENV [BIN_DIR]" >&2; exit 2; }

if [ "$(id -u)" != 0 ]; then echo "tlsrpt-reports: needs root" >&2; exit 2; fi
if [ -z "${MTA_STS_E2E_NETNS:-}" ]; then
    exec env MTA_STS_E2E_NETNS=1 unshare --net --mount --propagation private "$0" \
        --root "$ROOT" --venv "$VENV" "$BIN"
fi

pf() { chroot "$ROOT" "$@"; }

ip link set lo up
W=$(mktemp -d /tmp/mta-sts-tlsrpt.XXXXXX)
chmod 755 "$W"
echo "nameserver 127.0.0.1" > "$W/resolv.conf"
mount --bind "$W/resolv.conf" /etc/resolv.conf

. "$(dirname "$0")/lib.sh"
share_with_root "$ROOT"
before_stop() { pf postfix stop >/dev/null 2>&1 || true; }
trap stop_all EXIT

# --- the world ----------------------------------------------------------------------
start_world "$BIN"
world smtp 127.0.0.2 tls
world smtp 127.0.0.3 plain
world report-host reports.test
# Mailed reports go to tlsrpt@reports.test, delivered by the same Postfix.
world mx reports.test mx.reports.test 127.0.0.2; world cert mx.reports.test valid
RUA=https://reports.test/v1/tlsrpt
# reports.test asks for reports too: a session delivering a report to it would be
# counted, were it not left out.
world tlsrpt reports.test "$RUA"
#        domain           mode        mx host                 receiver
world policy good.test    1 enforce   mx.good.test;    world mx good.test mx.good.test 127.0.0.2;       world cert mx.good.test valid
world policy badcert.test 1 enforce   mx.badcert.test; world mx badcert.test mx.badcert.test 127.0.0.2; world cert mx.badcert.test wrong-name
world policy notls.test   1 enforce   mx.notls.test;   world mx notls.test mx.notls.test 127.0.0.3
world policy pattern.test 1 enforce   '*.pattern.test'; world mx pattern.test mx1.pattern.test 127.0.0.2; world cert mx1.pattern.test valid
world policy testing.test 1 testing   mx.testing.test; world mx testing.test mx.testing.test 127.0.0.2; world cert mx.testing.test wrong-name
                                                       world mx nopolicy.test mx.nopolicy.test 127.0.0.2; world cert mx.nopolicy.test valid
world policy norpt.test   1 enforce   mx.norpt.test;   world mx norpt.test mx.norpt.test 127.0.0.2;     world cert mx.norpt.test valid
world tlsrpt good.test "mailto:tlsrpt@reports.test,$RUA"
for d in badcert notls pattern testing nopolicy; do world tlsrpt "$d.test" "$RUA"; done

# --- mta-stsd -----------------------------------------------------------------------
# The daemon submits mailed reports by SMTP to that Postfix (127.0.0.1:25, its
# default), as it would the host's.
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
# The test world's policy and report servers are on loopback.
allow_private_addresses = true
[cache]
path = "$W/mta-stsd-cache"
[log]
level = "info"
format = "plain"
[dane]
mode = "off"
[zones.default]
tlsrpt = true
[tlsrpt]
enable = true
socket = "$W/tlsrpt/mta-stsd.sock"
# Postfix runs as the root's postfix user, whose group the host may not know.
socket_mode = "0666"
organization_name = "Sender Test"
contact_info = "postmaster@sender.test"
report_from = "tlsrpt-reports@sender.test"
CFG

# --- Postfix ------------------------------------------------------------------------
# One session per message, so that sessions can be counted.
sender_postfix "smtp_connection_cache_on_demand = no
smtp_tls_connection_reuse = no
smtp_tlsrpt_enable = yes
smtp_tlsrpt_socket_name = $W/tlsrpt/mta-stsd.sock"
"$BIN/mta-stsd" serve --config "$W/mta-stsd.toml" 2>"$W/mta-stsd.log" &
pids+=($!)
wait_tcp 127.0.0.1 8461 || { echo "mta-stsd did not start"; cat "$W/mta-stsd.log"; exit 1; }
pf postfix start >/dev/null 2>&1
echo "Postfix $(pf postconf -h mail_version), mta-stsd $("$BIN/mta-stsd" --version | cut -d' ' -f2), tlsrpt-reporter $("$VENV/bin/pip" show tlsrpt-reporter 2>/dev/null | sed -n 's/^Version: //p')"

# --- one round of deliveries --------------------------------------------------------
#             domain         messages  verdict
ROUND=(good.test:3:sent badcert.test:2:deferred notls.test:2:deferred pattern.test:2:sent
       testing.test:2:sent nopolicy.test:2:sent norpt.test:1:sent)
round() {  # round TAG: sends every message of ROUND, waits for every verdict
    local tag=$1 spec d n want
    for spec in "${ROUND[@]}"; do
        IFS=: read -r d n want <<< "$spec"
        for i in $(seq 1 "$n"); do
            printf 'Subject: %s %s %s\n\nhello\n' "$tag" "$d" "$i" \
                | pf sendmail -f sender@sender.test "$tag-$i@$d"
        done
    done
    for spec in "${ROUND[@]}"; do
        IFS=: read -r d n want <<< "$spec"
        for i in $(seq 1 "$n"); do
            local v=""
            for _ in $(seq 1 300); do
                v=$(grep -F "to=<$tag-$i@$d>" "$W/maillog" 2>/dev/null | grep -oE 'status=(sent|deferred|bounced)' | head -n1 | cut -d= -f2)
                [ -n "$v" ] && break
                sleep 0.1
            done
            [ "$v" = "$want" ] || check "$tag delivery to $d" "$want" "status=${v:-none}"
        done
    done
    # Deferred messages must not be retried into the next round's counts.
    pf postsuper -d ALL >/dev/null 2>&1 || true
}

metric() {
    python3 -c 'import sys, urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9461/metrics").read().decode())' 2>/dev/null \
        | awk -v m="$1" '$1 == m {print $2}'
}

round mta-stsd
# Every domain with a TLSRPT record had one datagram per message (norpt.test none).
want=13
for _ in $(seq 1 100); do
    [ "$(metric 'mta_stsd_tlsrpt_datagrams_total{result="counted"}')" = "$want" ] \
        && [ "$(metric mta_stsd_tlsrpt_datagrams_unstored)" = 0 ] && break
    sleep 0.1
done
got=$(metric 'mta_stsd_tlsrpt_datagrams_total{result="counted"}')
[ "$got" = "$want" ] && check "datagrams from Postfix" "$want counted and stored" ok \
    || check "datagrams from Postfix" "$want counted and stored" "counted $got, malformed $(metric 'mta_stsd_tlsrpt_datagrams_total{result="malformed"}')"
today=$(date -u +%F)
"$BIN/mta-stsd" tlsrpt show --config "$W/mta-stsd.toml" --day "$today" --json > "$W/ours.json"

# --- the reference collector, the same deliveries -------------------------------------
"$VENV/bin/tlsrpt-collectd" --storage "sqlite://$W/reference.sqlite" \
    --socketname "$W/tlsrpt/reference.sock" --socketmode 0666 --sockettimeout 1 \
    --logfilename "$W/collectd.log" --log_level info >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -S "$W/tlsrpt/reference.sock" ] && break; sleep 0.1; done
pf postconf -e "smtp_tlsrpt_socket_name = $W/tlsrpt/reference.sock"
pf postfix reload >/dev/null 2>&1
round reference
reference_counts() {
    "$VENV/bin/python" - "$W/reference.sqlite" <<'PY'
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
for d, t, f in con.execute("SELECT domain, SUM(cntrtotal), SUM(cntrfailure) FROM finalresults GROUP BY domain ORDER BY domain"):
    print(d, t, f)
PY
}
for _ in $(seq 1 100); do
    [ "$(reference_counts 2>/dev/null | awk '{s += $2} END {print s + 0}')" = "$want" ] && break
    sleep 0.2
done
reference_counts > "$W/reference.txt" 2>&1 || true
python3 - "$W/ours.json" > "$W/ours.txt" <<'PY'
import json, sys
view = json.load(open(sys.argv[1]))
for r in sorted(view["reports"], key=lambda r: r["domain"]):
    print(r["domain"], r["sessions"], r["failures"])
PY
if diff -u "$W/reference.txt" "$W/ours.txt" > "$W/diff.txt"; then
    check "counts equal the reference collector's" "$(tr '\n' ';' < "$W/ours.txt")" ok
else
    check "counts equal the reference collector's" "domain sessions failures" "$(cat "$W/diff.txt")"
fi
reference_details() {
    "$VENV/bin/python" - "$W/reference.sqlite" <<'PY'
import json, sqlite3, sys
con = sqlite3.connect(sys.argv[1])
for d, reason, n in con.execute("SELECT domain, reason, SUM(cntr) FROM failures GROUP BY domain, reason ORDER BY domain"):
    print(d, json.loads(reason)["c"], n)
PY
}
reference_details > "$W/reference-details.txt" 2>&1 || true
python3 - "$W/ours.json" > "$W/ours-details.txt" <<'PY'
import json, sys
codes = {"starttls-not-supported": 201, "certificate-host-mismatch": 202, "certificate-not-trusted": 203,
         "certificate-expired": 204, "validation-failure": 205}
view = json.load(open(sys.argv[1]))
for r in sorted(view["reports"], key=lambda r: r["domain"]):
    for p in r["report"]["policies"]:
        for d in p.get("failure-details", []):
            print(r["domain"], codes.get(d["result-type"], d["result-type"]), d["failed-session-count"])
PY
if diff -u "$W/reference-details.txt" "$W/ours-details.txt" > "$W/diff-details.txt"; then
    check "failure details equal the reference collector's" "$(tr '\n' ';' < "$W/ours-details.txt")" ok
else
    check "failure details equal the reference collector's" "domain code count" "$(cat "$W/diff-details.txt")"
fi

# --- the reports, and no report loop ---------------------------------------------------
# Postfix reports to mta-stsd again. Before 3.11 the report sender gets a transport
# without TLSRPT (the README's recipe); 3.11 skips TLSRPT for "TLS-Required: No" mail.
pf postconf -e "smtp_tlsrpt_socket_name = $W/tlsrpt/mta-stsd.sock"
version=$(pf postconf -h mail_version)
if [ "$(printf '%s\n' 3.11 "$version" | sort -V | head -n1)" != 3.11 ]; then
    pf postconf -e 'sender_dependent_default_transport_maps = inline:{ tlsrpt-reports@sender.test=smtp-notlsrpt: }'
    pf postconf -M 'smtp-notlsrpt/unix=smtp-notlsrpt unix - - n - - smtp -o syslog_name=postfix/smtp-notlsrpt -o smtp_tlsrpt_enable=no'
    RECIPE=true
else
    RECIPE=false
fi
pf postfix reload >/dev/null 2>&1
counted() { metric 'mta_stsd_tlsrpt_datagrams_total{result="counted"}'; }
wait_counted() {  # wait_counted N: until mta-stsd has counted N datagrams (at most 30 s)
    for _ in $(seq 1 300); do [ "$(counted)" = "$1" ] && return 0; sleep 0.1; done
    return 1
}
# A control message to reports.test from an ordinary sender: its session is counted.
printf 'Subject: control 1\n\nhello\n' | pf sendmail -f sender@sender.test control-1@reports.test
wait_counted 14 && check "mail to reports.test" "its session is counted (TLSRPT record)" ok \
    || check "mail to reports.test" "its session is counted (TLSRPT record)" "counted $(counted)"
if "$BIN/mta-stsd" tlsrpt send --config "$W/mta-stsd.toml" --day "$today" --partial > "$W/send.txt" 2>&1; then
    check "tlsrpt send --partial" "every delivery made" ok
else
    check "tlsrpt send --partial" "every delivery made" "$(cat "$W/send.txt")"
fi
uploads=$(ls "$W/received" | grep -c '^upload-reports.test-' || true)
[ "$uploads" = 7 ] && check "HTTPS uploads" "one per domain with a TLSRPT record (7)" ok \
    || check "HTTPS uploads" "one per domain with a TLSRPT record (7)" "$uploads"
python3 - "$W/received" "$W/ours.txt" > "$W/uploads.txt" <<'PY'
import glob, gzip, json, sys
for f in sorted(glob.glob(sys.argv[1] + "/upload-reports.test-*.gz")):
    r = json.loads(gzip.decompress(open(f, "rb").read()))
    for p in r["policies"]:
        s = p["summary"]
        print(p["policy"]["policy-type"], p["policy"].get("policy-domain", ""),
              s["total-successful-session-count"], s["total-failure-session-count"])
PY
grep -q "^sts badcert.test 0 2$" "$W/uploads.txt" && grep -q "^sts good.test 3 0$" "$W/uploads.txt" \
    && check "uploaded reports" "RFC 8460 JSON with the counts" ok \
    || check "uploaded reports" "RFC 8460 JSON with the counts" "$(tr '\n' ';' < "$W/uploads.txt")"
for _ in $(seq 1 300); do ls "$W/received" | grep -q '^tlsrpt@reports.test\..*\.eml$' && break; sleep 0.1; done
mail=$(ls "$W/received" | grep '^tlsrpt@reports.test\..*\.eml$' | head -n1 || true)
if [ -n "$mail" ] && grep -q '^TLS-Report-Domain: good.test' "$W/received/$mail" \
    && grep -q 'report-type="tlsrpt"' "$W/received/$mail"; then
    check "mailed report" "through Postfix to tlsrpt@reports.test" ok
else
    check "mailed report" "through Postfix to tlsrpt@reports.test" "${mail:-not received}"
fi
from=$(cat "$W/received/${mail%.eml}.from" 2>/dev/null || true)
[ "$from" = tlsrpt-reports@sender.test ] && check "mailed report" "envelope sender is report_from" ok \
    || check "mailed report" "envelope sender is report_from" "${from:-none}"
if $RECIPE; then
    grep -q 'postfix/smtp-notlsrpt/smtp\[.*to=<tlsrpt@reports.test>.*status=sent' "$W/maillog" \
        && check "report loop (Postfix $version)" "the report left through smtp-notlsrpt" ok \
        || check "report loop (Postfix $version)" "the report left through smtp-notlsrpt" "$(grep -F 'to=<tlsrpt@reports.test>' "$W/maillog" | tail -n1)"
fi
# A second control message after the report's delivery. Postfix sends a session's
# datagram (and logs "TLSRPT: status=...") before the delivery's status line, so once
# control 2 is logged as sent, every datagram of both sessions is on the socket; once
# the socket's queue is empty, mta-stsd has counted them all. 15, not 16: the
# report's session was not reported.
printf 'Subject: control 2\n\nhello\n' | pf sendmail -f sender@sender.test control-2@reports.test
for _ in $(seq 1 300); do grep -qF 'to=<control-2@reports.test>' "$W/maillog" && break; sleep 0.1; done
queued() { ss -xanH | awk -v s="$W/tlsrpt/mta-stsd.sock" '$5 == s {print $3}' | head -n1; }
for _ in $(seq 1 100); do [ "$(queued)" = 0 ] && break; sleep 0.1; done
wait_counted 15 || true
reported=$(grep -c 'TLSRPT: status=.*domain=reports.test' "$W/maillog" || true)
[ "$reported" = 2 ] && check "report loop (Postfix $version)" "Postfix reported the two control sessions only" ok \
    || check "report loop (Postfix $version)" "Postfix reported the two control sessions only" "$reported TLSRPT lines for reports.test"
[ "$(counted)" = 15 ] && check "report loop (Postfix $version)" "the mailed report's session is not counted" ok \
    || check "report loop (Postfix $version)" "the mailed report's session is not counted" "counted $(counted), want 15"

echo
if [ "$failures" -gt 0 ]; then
    echo "--- maillog (tail)"; tail -n 60 "$W/maillog"
    echo "--- mta-stsd log (tail)"; tail -n 40 "$W/mta-stsd.log"
    echo "--- reference collector log (tail)"; tail -n 20 "$W/collectd.log" 2>/dev/null || true
    echo "tlsrpt-reports: $failures case(s) failed"
    exit 1
fi
echo "tlsrpt-reports: all cases passed"
