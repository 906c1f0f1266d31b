#!/usr/bin/env bash
# perf/compare.sh — the whole comparison in one command: ringlb against nginx and HAProxy (and
# direct) on this machine, same settings, one run each of perf/l7.sh (HTTP small and 64 KiB
# responses at 64 and 256 connections), perf/l4.sh (HTTP through an L4 listener, one iperf3
# stream) and perf/udp.sh (DNS; nginx only, HAProxy has no UDP). Prints one table of ratios to
# ringlb and writes compare.md and compare.png (matplotlib) in the run directory,
# perf/runs/<date>-<hostname>-compare[-N]/, with each script's own run below it, and copies
# both next to perf/RESULTS.md (perf/compare.md, perf/compare.png: the latest run).
#
#   bash perf/compare.sh                 # ROUNDS=3 DURATION=10: about 25 minutes on 2 cores
#   ROUNDS=1 DURATION=3 bash perf/compare.sh   # a quick look (noisy: rounds are what make it fair)
#
# Everything the scripts need is installed when missing (as root): nginx, haproxy, wrk, iperf3,
# dnsperf, dnsmasq, knot-dnsutils, python3-matplotlib; ringlb is built (cargo build --release).
# Method: /work/shared/perf-method.md (see perf/README.md).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10}
PARTS=${PARTS:-"l7 l4 udp"}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# The chart's python: the first with matplotlib (Debian's package goes to /usr/bin/python3, which
# may not be the python3 first in PATH).
chart_python() {
    local p
    for p in python3 /usr/bin/python3; do
        "$p" -c "import matplotlib" >/dev/null 2>&1 && { echo "$p"; return 0; }
    done
    return 1
}
if ! chart_python >/dev/null; then
    if [[ $EUID -eq 0 ]]; then
        log "installing: python3-matplotlib (for the chart)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-matplotlib >/dev/null
    else
        log "no matplotlib and not root: the table only, no chart"
    fi
fi

base="$SCRIPT_DIR/runs/$(date +%Y-%m-%d)-$(hostname)-compare"
OUT=$base; n=2
while [[ -e $OUT ]]; do OUT="$base-$n"; n=$((n + 1)); done
mkdir -p "$OUT"
log "results: $OUT (ROUNDS=$ROUNDS DURATION=$DURATION, parts: $PARTS)"

runs=()
rc_all=0
for part in $PARTS; do
    dir="$OUT/$part"
    case $part in
        l7) env OUT_DIR="$dir" SIZES="small 64k" WRK_CONNS="64 256" TARGETS="direct ringlb nginx haproxy" \
                bash "$SCRIPT_DIR/l7.sh" || rc_all=$?;;
        l4) env OUT_DIR="$dir" WORKLOADS="wrk iperf" WRK_CONNS="64 256" TARGETS="direct ringlb nginx haproxy" \
                bash "$SCRIPT_DIR/l4.sh" || rc_all=$?;;
        udp) env OUT_DIR="$dir" TARGETS="direct ringlb nginx" bash "$SCRIPT_DIR/udp.sh" || rc_all=$?;;
        *) die "unknown part '$part' (l7 l4 udp)";;
    esac
    [[ -s $dir/raw.csv ]] && runs+=("$dir")
done
((${#runs[@]})) || die "no run produced results"
PY=$(chart_python) || PY=python3
"$PY" "$SCRIPT_DIR/summarize.py" compare "$OUT" "$OUT/compare.png" "${runs[@]}"
# The latest, next to RESULTS.md.
cp "$OUT/compare.md" "$SCRIPT_DIR/compare.md"
[[ -s $OUT/compare.png ]] && cp "$OUT/compare.png" "$SCRIPT_DIR/compare.png"
((rc_all == 0)) || log "some measurements failed (exit $rc_all): see each part's summary.md"
exit "$rc_all"
