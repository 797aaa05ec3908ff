#!/usr/bin/env bash
# Migration end to end: the real postfix-mta-sts-resolver (1.5.1, from PyPI) learns
# policies from a test world into its sqlite cache, and again into its Redis cache;
# `mta-stsd import` brings each into a fresh mta-stsd; then every policy is answered
# from mta-stsd's cache with the policy server down and no discovery at all. Runs in
# private namespaces.
#
#   sudo tests/e2e/import-python.sh VENV [BIN_DIR]
#
# VENV: a virtualenv with postfix-mta-sts-resolver[sqlite,redis]==1.5.1 installed.
# BIN_DIR holds mta-stsd and mta-sts-testworld (default target/debug). Needs root,
# Postfix's postmap (as the socketmap client), python3 and redis-server.
set -euo pipefail

VENV=$(realpath "$1")
BIN=$(realpath "${2:-target/debug}")
if [ "$(id -u)" != 0 ]; then echo "import-python: needs root" >&2; exit 2; fi
if [ -z "${MTA_STS_E2E_NETNS:-}" ]; then
    exec env MTA_STS_E2E_NETNS=1 unshare --net --mount --propagation private "$0" "$VENV" "$BIN"
fi

ip link set lo up
W=$(mktemp -d /tmp/mta-sts-import.XXXXXX)
echo "nameserver 127.0.0.1" > "$W/resolv.conf"
mount --bind "$W/resolv.conf" /etc/resolv.conf
. "$(dirname "$0")/lib.sh"
trap stop_all EXIT

start_world "$BIN"
domains=(one.test two.test three.test)
world policy one.test   11 enforce mx.one.test
world policy two.test   22 enforce '*.two.test'
world policy three.test 33 testing mx.three.test

printf 'compatibility_level = 3.6\n' > "$W/main.cf"
ask() {  # ask PORT DOMAIN: the socketmap answer, via Postfix's own client
    postmap -c "$W" -q "$2" "socketmap:inet:127.0.0.1:$1:postfix" || true
}

# --- postfix-mta-sts-resolver learns the policies ---------------------------------
cat > "$W/mta-sts-daemon.yml" <<CFG
host: 127.0.0.1
port: 8462
shutdown_timeout: 1
cache:
  type: sqlite
  options:
    filename: "$W/python-cache.db"
default_zone:
  strict_testing: false
  timeout: 4
CFG
SSL_CERT_FILE="$W/ca.pem" "$VENV/bin/mta-sts-daemon" -c "$W/mta-sts-daemon.yml" -v warn 2>"$W/python.log" &
python_pid=$!
pids+=("$python_pid")
wait_tcp 127.0.0.1 8462 || { echo "mta-sts-daemon did not start"; cat "$W/python.log"; exit 1; }
got=$(ask 8462 one.test)
[ "$got" = "secure match=mx.one.test servername=hostname" ] \
    && check "postfix-mta-sts-resolver" "answers from the test world" ok \
    || check "postfix-mta-sts-resolver" "answers from the test world" "got: $got ($(tail -3 "$W/python.log"))"
ask 8462 two.test >/dev/null; ask 8462 three.test >/dev/null
kill "$python_pid"; wait "$python_pid" 2>/dev/null || true
rows=$("$VENV/bin/python" -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from sts_policy_cache').fetchone()[0])" "$W/python-cache.db")
[ "$rows" = 3 ] && check "its sqlite cache" "3 policies" ok || check "its sqlite cache" "3 policies" "$rows rows"

# --- and once more with its Redis cache --------------------------------------------
redis-server --bind 127.0.0.1 --port 6390 --save "" --appendonly no --dir "$W" \
    --logfile "$W/redis.log" &
pids+=($!)
wait_tcp 127.0.0.1 6390 || { echo "redis-server did not start"; cat "$W/redis.log"; exit 1; }
sed -e 's/^port: 8462/port: 8463/' -e 's/type: sqlite/type: redis/' \
    -e "s|filename: .*|url: \"redis://127.0.0.1:6390/0\"|" \
    "$W/mta-sts-daemon.yml" > "$W/mta-sts-daemon-redis.yml"
SSL_CERT_FILE="$W/ca.pem" "$VENV/bin/mta-sts-daemon" -c "$W/mta-sts-daemon-redis.yml" -v warn 2>"$W/python-redis.log" &
python_pid=$!
pids+=("$python_pid")
wait_tcp 127.0.0.1 8463 || { echo "mta-sts-daemon (redis) did not start"; cat "$W/python-redis.log"; exit 1; }
for d in "${domains[@]}"; do ask 8463 "$d" >/dev/null; done
kill "$python_pid"; wait "$python_pid" 2>/dev/null || true
zsets=$(for d in "${domains[@]}"; do redis-cli -p 6390 zcard "$d"; done | paste -sd' ')
[ "$zsets" = "1 1 1" ] && check "its Redis cache" "3 policies" ok \
    || check "its Redis cache" "3 policies" "zcard: $zsets ($(tail -3 "$W/python-redis.log"))"

# --- the policy server goes away; mta-stsd starts empty and imports ---------------
for d in "${domains[@]}"; do world down "$d"; done
cat > "$W/mta-stsd.toml" <<CFG
[server]
listen = ["127.0.0.1:8461"]
[metrics]
listen = "127.0.0.1:9461"
[resolver]
nameservers = ["127.0.0.1:53"]
[fetch]
ca_file = "$W/ca.pem"
allow_private_addresses = true
[cache]
path = "$W/mta-stsd-cache"
CFG
"$BIN/mta-stsd" serve --config "$W/mta-stsd.toml" 2>"$W/mta-stsd.log" &
pids+=($!)
wait_tcp 127.0.0.1 9461 || { echo "mta-stsd did not start"; cat "$W/mta-stsd.log"; exit 1; }
import_twice() {  # import_twice SOURCE CONFIG LABEL: imports all three, then nothing
    local out
    out=$("$BIN/mta-stsd" import --from "$1" --config "$2")
    [[ "$out" == *"3 policies read: 3 imported"* ]] && check "$3" "3 imported" ok \
        || check "$3" "3 imported" "$out"
    out=$("$BIN/mta-stsd" import --from "$1" --config "$2")
    [[ "$out" == *"0 imported, 3 already cached"* ]] && check "$3 again" "nothing changes" ok \
        || check "$3 again" "nothing changes" "$out"
}
import_twice "sqlite:$W/python-cache.db" "$W/mta-stsd.toml" "mta-stsd import"

# --- a second mta-stsd, imported from the Redis cache -------------------------------
sed -e 's/8461/8464/' -e 's/9461/9464/' -e 's|mta-stsd-cache|mta-stsd-cache-redis|' \
    "$W/mta-stsd.toml" > "$W/mta-stsd-redis.toml"
"$BIN/mta-stsd" serve --config "$W/mta-stsd-redis.toml" 2>"$W/mta-stsd-redis.log" &
pids+=($!)
wait_tcp 127.0.0.1 9464 || { echo "mta-stsd (second) did not start"; cat "$W/mta-stsd-redis.log"; exit 1; }
import_twice "redis://127.0.0.1:6390/0" "$W/mta-stsd-redis.toml" "mta-stsd import from Redis"

# --- answered from the cache: the same answers, no discovery ----------------------
got=$(ask 8461 one.test)
[ "$got" = "secure match=mx.one.test servername=hostname" ] && check "one.test" "enforced from the imported policy" ok \
    || check "one.test" "enforced from the imported policy" "got: $got"
got=$(ask 8461 two.test)
[ "$got" = "secure match=.two.test servername=hostname" ] && check "two.test" "enforced from the imported policy" ok \
    || check "two.test" "enforced from the imported policy" "got: $got"
got=$(ask 8461 three.test)
[ -z "$got" ] && check "three.test" "testing mode: NOTFOUND" ok || check "three.test" "testing mode: NOTFOUND" "got: $got"
got=$(ask 8464 one.test)/$(ask 8464 two.test)/$(ask 8464 three.test)
want="secure match=mx.one.test servername=hostname/secure match=.two.test servername=hostname/"
[ "$got" = "$want" ] && check "imported from Redis" "the same three answers" ok \
    || check "imported from Redis" "the same three answers" "got: $got"
"$BIN/mta-stsd" cache show one.test --config "$W/mta-stsd-redis.toml" > "$W/show-redis.txt"
grep -q "^id:          11$" "$W/show-redis.txt" && check "cache show (Redis import)" "the original TXT id" ok \
    || check "cache show (Redis import)" "the original TXT id" "$(cat "$W/show-redis.txt")"
"$BIN/mta-stsd" cache show one.test --config "$W/mta-stsd.toml" > "$W/show.txt"
grep -q "^id:          11$" "$W/show.txt" && check "cache show" "the original TXT id" ok \
    || check "cache show" "the original TXT id" "$(cat "$W/show.txt")"
for mport in 9461 9464; do
    metrics=$(exec 3<>/dev/tcp/127.0.0.1/$mport; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; cat <&3)
    # Every label set is exported from the start at 0: a discovery is a count above 0.
    ran=$(awk '/^mta_stsd_discoveries_total/ && $NF != 0' <<<"$metrics")
    if [ -n "$ran" ]; then
        check "no network (:$mport)" "no discovery ran" "$ran"
    else
        check "no network (:$mport)" "no discovery ran" ok
    fi
done

echo
if [ "$failures" -gt 0 ]; then
    echo "--- mta-stsd log (tail)"; tail -n 30 "$W/mta-stsd.log"
    echo "import-python: $failures case(s) failed"
    exit 1
fi
echo "import-python: all cases passed"
