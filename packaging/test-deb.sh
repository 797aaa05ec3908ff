#!/usr/bin/env bash
# Checks a built package the way an operator meets it: lintian, dpkg -i, files, user,
# unit, hardening score, the packaged daemon answering Postfix, then purge.
# Needs root; installs the package on this machine (CI runs it on a throwaway one).
set -euo pipefail
cd "$(dirname "$0")/.."
deb=$(ls target/debian/mta-stsd_*.deb | tail -n 1)
# A failed check stops the daemons this script started, so none is left running.
fail() { echo "package check failed: $*" >&2; kill $(jobs -p) 2>/dev/null || true; exit 1; }

echo "== lintian $deb"
lintian --fail-on error "$deb"

echo "== dpkg -i (this machine runs without systemd as PID 1: postinst's own path)"
run_existed=false
[ -d /var/spool/postfix/run ] && run_existed=true
dpkg -i "$deb" 2> /tmp/mta-stsd-dpkg.err || { cat /tmp/mta-stsd-dpkg.err; fail "dpkg -i"; }
cat /tmp/mta-stsd-dpkg.err
if [ ! -d /run/systemd/system ]; then
    grep -q "Without systemd" /tmp/mta-stsd-dpkg.err || fail "postinst does not say how to start without systemd"
fi
[ "$(stat -c '%U:%G %a' /var/lib/mta-stsd)" = "_mta-stsd:_mta-stsd 750" ] \
    || fail "/var/lib/mta-stsd is $(stat -c '%U:%G %a' /var/lib/mta-stsd 2>&1), want _mta-stsd:_mta-stsd 750"
test -x /usr/bin/mta-stsd || fail "no /usr/bin/mta-stsd"
test -f /etc/mta-stsd/mta-stsd.toml || fail "no config"
dpkg-query -W -f='${Conffiles}\n' mta-stsd | grep -q '/etc/mta-stsd/mta-stsd.toml' || fail "config is not a conffile"
getent passwd _mta-stsd >/dev/null || fail "no _mta-stsd user"
unit=/usr/lib/systemd/system/mta-stsd.service
test -f "$unit" || fail "no unit"
test -f /lib/systemd/system/mta-stsd.socket || fail "no socket unit"
test ! -e /etc/systemd/system/sockets.target.wants/mta-stsd.socket || fail "socket unit enabled by default"
test -e /etc/systemd/system/multi-user.target.wants/mta-stsd.service || fail "service not enabled"
test -f /usr/share/man/man8/mta-stsd.8.gz || fail "no mta-stsd(8)"
test -f /usr/share/man/man5/mta-stsd.toml.5.gz || fail "no mta-stsd.toml(5)"
mta-stsd check-config /etc/mta-stsd/mta-stsd.toml

echo "== systemd-analyze security"
systemd-analyze security --offline=true "$unit" | tail -n 1
score=$(systemd-analyze security --offline=true "$unit" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || fail "no exposure score"
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure $score > 2.0"

echo "== the packaged daemon, as _mta-stsd, with the packaged config"
setpriv --reuid=_mta-stsd --regid=_mta-stsd --init-groups /usr/bin/mta-stsd serve --config /etc/mta-stsd/mta-stsd.toml &
pid=$!
for _ in $(seq 1 50); do
    (exec 3<>/dev/tcp/127.0.0.1/8461) 2>/dev/null && break
    sleep 0.1
done
confdir=$(mktemp -d)
echo "compatibility_level = 3.6" > "$confdir/main.cf"
set +e
out=$(postmap -c "$confdir" -q "[192.0.2.1]" socketmap:inet:127.0.0.1:8461:postfix)
rc=$?
set -e
[ "$rc" = 1 ] && [ -z "$out" ] || fail "postmap got rc=$rc '$out' (want NOTFOUND)"
mta-stsd cache list --config /etc/mta-stsd/mta-stsd.toml | grep -q "0 entries" || fail "cache list"
# doctor with the packaged configuration (its default) and a Postfix set up as the
# README says: nothing to report.
cp /usr/share/postfix/master.cf.dist "$confdir/master.cf"
cat >> "$confdir/main.cf" <<'CF'
smtp_tls_policy_maps = socketmap:inet:127.0.0.1:8461:postfix
smtp_tls_CAfile = /etc/ssl/certs/ca-certificates.crt
smtp_tls_security_level = may
CF
set +e
report=$(mta-stsd doctor --postfix-config "$confdir")
rc=$?
set -e
echo "$report"
[ "$rc" = 0 ] || fail "doctor exit $rc on a good setup"
kill -TERM "$pid"
wait "$pid" || fail "daemon did not exit 0 on SIGTERM"
test -d /var/lib/mta-stsd/cache || fail "no cache written"

echo "== unix socket recipe (contrib/postfix/main.cf.unix): the package's directory, the unit, Postfix's postmap as postfix"
sock_dir=/var/spool/postfix/mta-stsd
test -d "$sock_dir" || fail "no $sock_dir (postinst creates it when Postfix is installed)"
[ "$(stat -c '%U:%G %a' "$sock_dir")" = "_mta-stsd:postfix 2750" ] \
    || fail "$sock_dir is $(stat -c '%U:%G %a' "$sock_dir"), want _mta-stsd:postfix 2750"
grep -qx 'ReadWritePaths=-/var/spool/postfix/mta-stsd' "$unit" || fail "the unit may not write $sock_dir"
unix_conf=$(mktemp)
cat > "$unix_conf" <<TOML
[server]
listen = ["unix:$sock_dir/socketmap"]
socket_mode = "0660"
[metrics]
listen = ""
[cache]
path = "/var/lib/mta-stsd/cache-unix"
[dane]
mode = "off"
TOML
chmod 644 "$unix_conf"
mta-stsd check-config --config "$unix_conf"
# As the unit runs it: its user and group, its umask.
(umask 0027; exec setpriv --reuid=_mta-stsd --regid=_mta-stsd --init-groups \
    /usr/bin/mta-stsd serve --config "$unix_conf") &
upid=$!
for _ in $(seq 1 50); do
    [ -S "$sock_dir/socketmap" ] && break
    sleep 0.1
done
[ -S "$sock_dir/socketmap" ] || fail "no socket at $sock_dir/socketmap"
[ "$(stat -c '%G %a' "$sock_dir/socketmap")" = "postfix 660" ] \
    || fail "socket is $(stat -c '%G %a' "$sock_dir/socketmap"), want group postfix, 660"
chmod 755 "$confdir"
set +e
out=$(setpriv --reuid=postfix --regid=postfix --init-groups \
    postmap -c "$confdir" -q "[192.0.2.1]" "socketmap:unix:$sock_dir/socketmap:postfix" 2>&1)
rc=$?
set -e
# NOTFOUND: exit 1 with no complaint about the socket ("Permission denied" and the
# like are printed, with the map's name, when postmap cannot use it).
[ "$rc" = 1 ] || fail "postmap as postfix over the unix socket: rc=$rc '$out'"
if printf '%s' "$out" | grep -Eqi 'denied|socketmap|fatal|error'; then
    fail "postmap as postfix over the unix socket: '$out'"
fi
echo "postmap as postfix over $sock_dir/socketmap: NOTFOUND, as expected"
kill -TERM "$upid"
wait "$upid" || fail "unix-socket daemon did not exit 0 on SIGTERM"

echo "== TLSRPT socket: the package's directory, the unit, a datagram from user postfix"
rpt_dir=/var/spool/postfix/run/tlsrpt
test -d "$rpt_dir" || fail "no $rpt_dir (postinst creates it when Postfix is installed)"
[ "$(stat -c '%U:%G %a' "$rpt_dir")" = "_mta-stsd:postfix 2750" ] \
    || fail "$rpt_dir is $(stat -c '%U:%G %a' "$rpt_dir"), want _mta-stsd:postfix 2750"
grep -qx 'ReadWritePaths=-/var/spool/postfix/run/tlsrpt' "$unit" || fail "the unit may not write $rpt_dir"
rpt_conf=$(mktemp)
cat > "$rpt_conf" <<TOML
[server]
listen = ["127.0.0.1:18461"]
[metrics]
listen = "127.0.0.1:19461"
[cache]
path = "/var/lib/mta-stsd/cache-tlsrpt-test"
[dane]
mode = "off"
[tlsrpt]
enable = true
organization_name = "Package Test"
contact_info = "postmaster@example.com"
report_from = "tlsrpt@example.com"
smtp = "127.0.0.1:10025"
TOML
chmod 644 "$rpt_conf"
mta-stsd check-config --config "$rpt_conf"
# A Postfix instance of its own receives the mailed report on 127.0.0.1:10025 and keeps
# it queued (defer_transports): the host's Postfix is not touched.
pf_dir=$(mktemp -d)
chmod 755 "$pf_dir"
pf_conf=$pf_dir/etc
mkdir -p "$pf_conf"
cp /usr/share/postfix/master.cf.dist "$pf_conf/master.cf"
cat > "$pf_conf/main.cf" <<CF
compatibility_level = 3.6
queue_directory = $pf_dir/spool
data_directory = $pf_dir/data
myhostname = pkgtest.example.com
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
defer_transports = smtp
maillog_file = $pf_dir/maillog
maillog_file_prefixes = $pf_dir
CF
mkdir -p "$pf_dir/spool" "$pf_dir/data" && chown postfix "$pf_dir/data"
postconf -c "$pf_conf" -MX smtp/inet
postconf -c "$pf_conf" -M '127.0.0.1:10025/inet=127.0.0.1:10025 inet n - n - - smtpd'
postconf -c "$pf_conf" -M 'postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd'
postconf -c "$pf_conf" -F '*/*/chroot = n'
postfix -c "$pf_conf" start >/dev/null 2>&1 || fail "the test Postfix did not start"
# The daemon as the unit runs it: its user, its umask, and NoNewPrivileges=yes (which
# is what stops Postfix's sendmail from running the setgid postdrop).
(umask 0027; exec setpriv --reuid=_mta-stsd --regid=_mta-stsd --init-groups --no-new-privs \
    /usr/bin/mta-stsd serve --config "$rpt_conf") &
rpid=$!
for _ in $(seq 1 50); do
    [ -S "$rpt_dir/tlsrpt.sock" ] && break
    sleep 0.1
done
[ -S "$rpt_dir/tlsrpt.sock" ] || fail "no socket at $rpt_dir/tlsrpt.sock"
[ "$(stat -c '%G %a' "$rpt_dir/tlsrpt.sock")" = "postfix 660" ] \
    || fail "TLSRPT socket is $(stat -c '%G %a' "$rpt_dir/tlsrpt.sock"), want group postfix, 660"
setpriv --reuid=postfix --regid=postfix --init-groups /usr/bin/python3 -c '
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"{\"d\":\"example.net\",\"pr\":\"v=TLSRPTv1;rua=mailto:r@example.net\",\"policies\":[{\"policy-type\":9,\"f\":0}]}", sys.argv[1])
' "$rpt_dir/tlsrpt.sock" || fail "user postfix cannot write to the TLSRPT socket"
for _ in $(seq 1 50); do
    mta-stsd tlsrpt show --config "$rpt_conf" 2>/dev/null | grep -q "example.net: 1 session" && break
    sleep 0.1
done
mta-stsd tlsrpt show --config "$rpt_conf" | grep -q "example.net: 1 session" \
    || fail "the datagram from user postfix was not counted"
echo "TLSRPT datagram from user postfix over $rpt_dir/tlsrpt.sock: counted"
grep -q NoNewPrivs:.*1 "/proc/$rpid/status" || fail "the daemon does not run with no_new_privs"
mta-stsd tlsrpt send --config "$rpt_conf" --day "$(date -u +%F)" --partial \
    || fail "tlsrpt send under NoNewPrivileges: the report mail was not accepted"
queued=$(postqueue -c "$pf_conf" -j)
echo "$queued" | grep -q '"sender": *"tlsrpt@example.com"' && echo "$queued" | grep -q '"address": *"r@example.net"' \
    || fail "no report mail from tlsrpt@example.com to r@example.net in the queue: $queued"
echo "TLSRPT report mail under no_new_privs: queued by Postfix, from tlsrpt@example.com to r@example.net"
postsuper -c "$pf_conf" -d ALL >/dev/null 2>&1 || true
postfix -c "$pf_conf" stop >/dev/null 2>&1 || true
kill -TERM "$rpid"
wait "$rpid" || fail "TLSRPT daemon did not exit 0 on SIGTERM"

echo "== dpkg --purge"
dpkg --purge mta-stsd
getent passwd _mta-stsd >/dev/null && fail "user left after purge"
test ! -e /var/lib/mta-stsd || fail "state left after purge"
test ! -e /etc/mta-stsd/mta-stsd.toml || fail "config left after purge"
test ! -e /var/spool/postfix/mta-stsd || fail "socket directory left after purge"
test ! -e /var/spool/postfix/run/tlsrpt || fail "TLSRPT socket directory left after purge"
if ! $run_existed; then
    test ! -e /var/spool/postfix/run || fail "/var/spool/postfix/run, made by the package, left after purge"
fi
echo "package checks passed"
