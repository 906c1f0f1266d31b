#!/usr/bin/env bash
# perf/udp.sh — DNS over UDP through ringlb (`mode = "udp"`, `responses = 1`) and nginx `stream`
# (`listen ... udp reuseport`, `proxy_responses 1`), and direct, in one run, against the same
# backends: two dnsmasq servers (round robin over both; one on each port, both on the client CPU).
# Client: dnsperf -c UDP_CLIENTS -Q UDP_QPS -l DURATION over a file of A queries for one name.
# HAProxy has no UDP proxying, so it is not a target here.
# Method: /work/shared/perf-method.md (see perf/README.md); shared parts: perf/lib.sh.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
SUMMARIZE="$SCRIPT_DIR/summarize.py"

TARGETS=${TARGETS:-"direct ringlb nginx"}
UDP_CLIENTS=${UDP_CLIENTS:-8}       # dnsperf -c: client sockets (source ports)
UDP_QPS=${UDP_QPS:-200000}          # dnsperf -Q: a ceiling, not reached on 2 cores
UDP_OUTSTANDING=${UDP_OUTSTANDING:-100}   # dnsperf -q: queries in flight
source "$SCRIPT_DIR/lib.sh"

declare -A TIDX=([direct]=0 [ringlb]=1 [nginx]=2)
for t in "${T_LIST[@]}"; do [[ -n ${TIDX[$t]+x} ]] || die "unknown target '$t' (direct ringlb nginx)"; done
B1=$((18380 + PORT_OFFSET)); B2=$((18381 + PORT_OFFSET))
port_of() { if [[ $1 == direct ]]; then echo "$B1"; else echo $((18390 + PORT_OFFSET + TIDX[$1])); fi; }

need=()
command -v dnsperf >/dev/null 2>&1 || need+=(dnsperf)
command -v kdig >/dev/null 2>&1 || need+=(knot-dnsutils)
command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
apt_install "${need[@]}"
command -v python3 >/dev/null 2>&1 || die "python3 is required"
if has_t ringlb; then ensure_ringlb; fi
# nginx's stream module (Debian: libnginx-mod-stream, pulled in by nginx)
NGINX_STREAM=""
for m in /usr/lib/nginx/modules/ngx_stream_module.so /usr/share/nginx/modules/ngx_stream_module.so; do
    [[ -e $m ]] && NGINX_STREAM="load_module $m;"
done

init_out_dir "-udp$([[ $PIN == 1 ]] || echo -unpinned)"
echo udp >"$OUT_DIR/kind"   # summarize.py: the comparison layout, no L7 goals
udp_listening() { ss -ulnH "sport = :$1" 2>/dev/null | grep -q .; }
for p in "$B1" "$B2"; do udp_listening "$p" && die "udp port $p is already in use (set PORT_OFFSET)"; done
for t in "${T_LIST[@]}"; do udp_listening "$(port_of "$t")" && [[ $t != direct ]] && die "udp port $(port_of "$t") is in use"; done

HOSTS="$OUT_DIR/conf/hosts"
echo "10.1.1.1 bench.test" >"$HOSTS"
QUERIES="$OUT_DIR/conf/queries.txt"
for _ in $(seq 100); do echo "bench.test A"; done >"$QUERIES"

BE_PIDS=()
backend_pids() { printf "%s\n" "${BE_PIDS[@]}"; }
start_backends() {
    local p
    for p in "$B1" "$B2"; do
        "${CL[@]}" dnsmasq --keep-in-foreground --conf-file=/dev/null --listen-address=127.0.0.1 \
            --bind-interfaces --no-resolv --no-hosts --addn-hosts="$HOSTS" --pid-file= --cache-size=1000 \
            --port="$p" $([[ $EUID -eq 0 ]] && echo --user=root) \
            </dev/null >>"$OUT_DIR/logs/dnsmasq-$p.log" 2>&1 &
        BE_PIDS+=($!); RUNNING[$!]="dnsmasq $p"
    done
    for p in "$B1" "$B2"; do
        local ok=0
        for _ in $(seq 50); do dns_ok "$p" && { ok=1; break; }; sleep 0.1; done
        ((ok)) || die "dnsmasq on $p did not answer (logs/dnsmasq-$p.log)"
    done
}
dns_ok() { [[ $(kdig @127.0.0.1 -p "$1" bench.test +short +timeout=1 +retry=0 2>/dev/null) == 10.1.1.1 ]]; }

ringlb_conf() {
    local f="$OUT_DIR/conf/ringlb.toml"
    cat >"$f" <<EOF2
$(ringlb_runtime)

[[listener]]
name = "dns"
mode = "udp"
listen = "127.0.0.1:$(port_of ringlb)"
upstream = "dns"
responses = 1
idle_timeout = "10s"
${RINGLB_EXTRA:+$RINGLB_EXTRA
}
[upstream.dns]
balance = "round_robin"
servers = [{ addr = "127.0.0.1:$B1" }, { addr = "127.0.0.1:$B2" }]
EOF2
    echo "$f"
}
nginx_conf() {
    local f="$OUT_DIR/conf/nginx-udp.conf" pre="$TMP/px-nginx"
    mkdir -p "$pre"
    cat >"$f" <<EOF2
$NGINX_STREAM
$(nginx_head "$pre" nginx-udp "$PWORKERS")
events { worker_connections 16384; }
stream {
    upstream dns {
        server 127.0.0.1:$B1;
        server 127.0.0.1:$B2;
    }
    server {
        listen 127.0.0.1:$(port_of nginx) udp reuseport;
        proxy_pass dns;
        proxy_responses 1;
        proxy_timeout 10s;
    }
}
EOF2
    echo "$f"
}
start_proxy() {
    local t=$1 ok=0
    PROXY_PID=""
    case $t in
        direct) return 0;;
        ringlb) launch_ringlb "$(ringlb_conf)" ringlb || return 1;;
        nginx)  launch_nginx "$(nginx_conf)" nginx-udp;;
    esac
    for _ in $(seq 100); do dns_ok "$(port_of "$t")" && { ok=1; break; }; sleep 0.1; done
    ((ok)) || { log "$t: no DNS answer through the proxy within 10s (logs/)"; return 1; }
}
warm_up() {
    timeout $((WARMUP + 20)) "${CL[@]}" dnsperf -s 127.0.0.1 -p "$(port_of "$1")" -d "$QUERIES" \
        -c "$UDP_CLIENTS" -q "$UDP_OUTSTANDING" -Q "$UDP_QPS" -l "$WARMUP" </dev/null >/dev/null 2>&1 || true
}
parse_dnsperf() { # file -> "key value" lines
    awk '
        /Queries sent:/      { print "queries_sent", $3 }
        /Queries completed:/ { print "requests", $3 }
        /Queries lost:/      { print "socket_errors", $3 }
        /Queries per second:/ { print "rps", $4 }
        /Average Latency \(s\):/ { printf "lat_avg_ms %.4f\n", $4 * 1000; m = $6; gsub(/,/, "", m); printf "lat_min_ms %.4f\n", m * 1000; x = $8; gsub(/\)/, "", x); printf "lat_max_ms %.4f\n", x * 1000 }
        /Latency StdDev \(s\):/ { printf "lat_stddev_ms %.4f\n", $4 * 1000 }
    ' "$1"
}
run_workloads() {
    local t=$1 wl="dns_c${UDP_CLIENTS}" out="$OUT_DIR/out/r${ROUND}-$1-dns.txt" rc=0 reqs
    sleep "$PAUSE"
    m_begin dns
    timeout $((DURATION + 30)) "${CL[@]}" dnsperf -s 127.0.0.1 -p "$(port_of "$t")" -d "$QUERIES" \
        -c "$UDP_CLIENTS" -q "$UDP_OUTSTANDING" -Q "$UDP_QPS" -l "$DURATION" </dev/null >"$out" 2>&1 || rc=$?
    m_snap
    parse_dnsperf "$out" >"$out.parsed"
    reqs=$(metric_of "$out.parsed" requests)
    if ((rc)) || [[ -z $reqs || $reqs == 0 ]]; then
        log "  $t $wl FAILED (rc=$rc, $out)"; note "$t" failed "$wl" 1; return 0
    fi
    m_emit "$wl" "$reqs" req
    while read -r k v; do emit "$wl" "$k" "$v"; done <"$out.parsed"
    log "  $t $wl: $(metric_of "$out.parsed" rps) queries/s, avg $(metric_of "$out.parsed" lat_avg_ms) ms, lost $(metric_of "$out.parsed" socket_errors)"
}

write_setup() {
    {
        echo "# Setup (UDP: DNS)"
        echo
        setup_host_lines
        echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
        echo "- dnsperf: $(dnsperf -h 2>&1 | grep -m1 -i version || echo unknown)"
        echo "- dnsmasq: $(dnsmasq --version 2>&1 | head -1)"
        setup_tail_head
        echo "ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP TARGETS=\"$TARGETS\" UDP_CLIENTS=$UDP_CLIENTS UDP_QPS=$UDP_QPS UDP_OUTSTANDING=$UDP_OUTSTANDING PIN=$PIN \\"
        echo "  RINGLB=$RINGLB RINGLB_EXTRA='$RINGLB_EXTRA' $0 $*"
        echo '```'
        echo
        echo "## Method"
        echo
        setup_pin_line
        echo "- Backends: two dnsmasq servers (ports $B1 and $B2, cache on, one A record), on the client CPU."
        echo "- Proxies, round robin over both: ringlb \`mode = \"udp\"\` with \`responses = 1\`, \`idle_timeout = \"10s\"\`; nginx \`stream\` \`listen ... udp reuseport\`, \`proxy_responses 1\`, \`proxy_timeout 10s\`. \`direct\` asks the first dnsmasq. Configs in conf/."
        echo "- Client: dnsperf -c $UDP_CLIENTS -q $UDP_OUTSTANDING -Q $UDP_QPS -l $DURATION over $QUERIES (A queries for bench.test). Lost queries are shown as errors."
        echo "- CPU as in perf/l7.sh: /proc/PID/stat of the proxy and of the backends before and after each measurement; \"per 100k req\" is per 100k answered queries."
    } >"$OUT_DIR/SETUP.md"
    echo "UDP DNS, PIN=$PIN ($(pin_summary)); $(nginx -v 2>&1 | sed 's/^nginx version: //')$(ringlb_meta); host $(hostname), kernel $(uname -r). See SETUP.md." >"$OUT_DIR/meta.txt"
}

write_setup "$@"
log "results: $OUT_DIR"
log "targets: ${T_LIST[*]}; dnsperf clients: $UDP_CLIENTS; rounds: $ROUNDS; PIN=$PIN"
start_backends
run_rounds
finish
