#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, with a corpus made of
# the committed seeds (fuzz/seeds/TARGET) plus, when present beside the repository,
# the real-world policies and TXT records of ../shared/corpus. Exits non-zero on the
# first crash; the crashing input is in fuzz/artifacts/TARGET/.
#
#   fuzz/run.sh 60                 # CI: a minute per target
#   fuzz/run.sh 900 policy codec   # a long run of two targets
#
# Needs cargo-fuzz (cargo install cargo-fuzz) and a nightly compiler; without a
# nightly toolchain the stable one is used with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(codec domain_key txt_record policy render_tlsrpt store_entry tlsrpt_datagram)

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
fi
shared=../../shared/corpus

for t in "${targets[@]}"; do
    corpus=corpus/$t
    mkdir -p "$corpus"
    cp -n seeds/"$t"/* "$corpus"/ 2>/dev/null || true
    case $t in
        policy | render_tlsrpt)
            [ -d "$shared/policies" ] && cp -n "$shared"/policies/* "$corpus"/ ;;
        txt_record)
            if [ -f "$shared/txt.tsv" ]; then
                n=0
                cut -f1 "$shared/txt.tsv" | while IFS= read -r rec; do
                    n=$((n + 1))
                    printf '%s' "$rec" > "$corpus/shared-$n"
                done
            fi ;;
    esac
    echo "== fuzz $t for ${seconds}s ($(ls "$corpus" | wc -l) corpus inputs)"
    log=$(mktemp)
    set +e
    "${fuzz[@]}" run "$t" "$corpus" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
        -print_final_stats=1 > "$log" 2>&1
    status=$?
    set -e
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done|==|SUMMARY|thread|.*panicked)' "$log" || true
    if [ -n "$(ls artifacts/"$t" 2>/dev/null)" ]; then
        echo "fuzz $t: crash, see fuzz/artifacts/$t/" >&2
        exit 1
    fi
    # A target that does not build, or a missing cargo-fuzz, is a failure too.
    if [ "$status" != 0 ]; then
        tail -n 20 "$log" >&2
        echo "fuzz $t: failed (exit $status)" >&2
        exit 1
    fi
    rm -f "$log"
done
