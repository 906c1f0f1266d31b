#!/usr/bin/env bash
# perf/l4.sh — whole-system L4 (TCP) comparison on one machine, in one run:
#   direct (client -> backend), ringlb, nginx `stream`, HAProxy `mode tcp` (splice-auto, and no splice)
# against the same backends (redis-server, nginx http "hello", iperf3 -s).
# Method: /work/shared/perf-method.md (see perf/README.md). Every process started here is
# tracked by PID and stopped by the EXIT trap.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
SUMMARIZE="$SCRIPT_DIR/summarize.py"

# ----------------------------------------------------------------------------- knobs
WORKLOADS=${WORKLOADS:-"redis wrk iperf"}
TARGETS=${TARGETS:-"direct ringlb nginx haproxy haproxy-nosplice"}
WRK_CONNS=${WRK_CONNS:-64}          # e.g. "64 256"
REDIS_N=${REDIS_N:-200000}
REDIS_PIPELINES=${REDIS_PIPELINES:-"1 16"}
IPERF_TIME=${IPERF_TIME:-5}
IPERF_STREAMS=${IPERF_STREAMS:-1}   # parallel iperf3 streams (-P)
# shared knobs (ROUNDS DURATION WARMUP IDLE_WAIT PIN RINGLB RINGLB_EXTRA RINGLB_IO_URING PORT_OFFSET
# PAUSE), processes, limits, CPU accounting, backend nginx, wrk, rounds (PX/CL/PWORKERS from PIN)
source "$SCRIPT_DIR/lib.sh"
list_knob WORKLOADS WL_LIST
list_knob WRK_CONNS C_LIST
list_knob REDIS_PIPELINES P_LIST

declare -A TIDX=([direct]=0 [ringlb]=1 [nginx]=2 [haproxy]=3 [haproxy-nosplice]=4 [ringlb-copy]=5 [ringlb-splice]=6)
for t in "${T_LIST[@]}"; do [[ -n ${TIDX[$t]+x} ]] || die "unknown target '$t' (direct ringlb ringlb-copy ringlb-splice nginx haproxy haproxy-nosplice)"; done
for w in "${WL_LIST[@]}"; do case $w in redis|wrk|iperf) ;; *) die "unknown workload '$w' (redis wrk iperf)";; esac; done
[[ ${#T_LIST[@]} -gt 0 && ${#WL_LIST[@]} -gt 0 ]] || die "empty TARGETS or WORKLOADS"
has_wl() { local w; for w in "${WL_LIST[@]}"; do [[ $w == "$1" ]] && return 0; done; return 1; }

# ports: backends, then one distinct port per target and service
B_REDIS=$((16379 + PORT_OFFSET)); B_HTTP1=$((18080 + PORT_OFFSET)); B_HTTP2=$((18081 + PORT_OFFSET)); B_IPERF=$((15201 + PORT_OFFSET))
port_of() { # target service
    local i=${TIDX[$1]}
    case $2 in
        redis) echo $((B_REDIS + i));;
        http)  if ((i == 0)); then echo "$B_HTTP1"; else echo $((18090 + PORT_OFFSET + i)); fi;;
        iperf) echo $((B_IPERF + i));;
    esac
}

# ----------------------------------------------------------------------------- install
install_missing() {
    local need=()
    command -v wrk >/dev/null 2>&1 || need+=(wrk)
    command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
    command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
    { command -v redis-benchmark && command -v redis-cli; } >/dev/null 2>&1 || need+=(redis-tools)
    command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
    command -v ss >/dev/null 2>&1 || need+=(iproute2)
    command -v taskset >/dev/null 2>&1 || need+=(util-linux)
    if ! command -v nginx >/dev/null 2>&1; then
        need+=(nginx libnginx-mod-stream)
    elif nginx -V 2>&1 | grep -q -- '--with-stream=dynamic' && [[ ! -e $(nginx_modules_dir)/ngx_stream_module.so ]]; then
        need+=(libnginx-mod-stream)
    fi
    apt_install "${need[@]}"
    command -v python3 >/dev/null 2>&1 || die "python3 is required"
}
nginx_modules_dir() {
    local d
    d=$(nginx -V 2>&1 | grep -o -- '--modules-path=[^ ]*' | cut -d= -f2 || true)
    echo "${d:-/usr/lib/nginx/modules}"
}
install_missing
NGINX_STREAM_LOAD=""
if nginx -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
    NGINX_STREAM_LOAD="load_module $(nginx_modules_dir)/ngx_stream_module.so;"
elif ! nginx -V 2>&1 | grep -q -- '--with-stream'; then
    has_t nginx && die "this nginx has no stream module"
fi

if has_t ringlb || has_t ringlb-copy || has_t ringlb-splice; then ensure_ringlb; fi

# ----------------------------------------------------------------------------- run dir
init_out_dir "$([[ $PIN == 1 ]] || echo -unpinned)"

# services the selected workloads need: redis -> redis, wrk -> http, iperf -> iperf
SVCS=()
has_wl redis && SVCS+=(redis)
has_wl wrk && SVCS+=(http)
has_wl iperf && SVCS+=(iperf)

all_ports=()
for s in "${SVCS[@]}"; do
    case $s in redis) all_ports+=("$B_REDIS");; http) all_ports+=("$B_HTTP1" "$B_HTTP2");; iperf) all_ports+=("$B_IPERF");; esac
    for t in "${T_LIST[@]}"; do [[ $t == direct ]] || all_ports+=("$(port_of "$t" "$s")"); done
done
check_ports_free "${all_ports[@]}"

# ----------------------------------------------------------------------------- backends
REDIS_PID=""; IPERF_PID=""
redis_ok() { [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "$1" PING 2>/dev/null) == PONG ]]; }
start_redis() {
    mkdir -p "$TMP/redis"
    "${CL[@]}" redis-server --port "$B_REDIS" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$TMP/redis" --logfile "$OUT_DIR/logs/redis.log" --daemonize no --protected-mode no \
        </dev/null >/dev/null 2>&1 &
    REDIS_PID=$!; RUNNING[$REDIS_PID]="redis-server"
    wait_listen "$REDIS_PID" 10 "$B_REDIS" && redis_ok "$B_REDIS" || die "redis-server did not start (logs/redis.log)"
}
start_iperf() {
    "${CL[@]}" iperf3 -s -B 127.0.0.1 -p "$B_IPERF" </dev/null >>"$OUT_DIR/logs/iperf3-server.log" 2>&1 &
    IPERF_PID=$!; RUNNING[$IPERF_PID]="iperf3 server"
    wait_listen "$IPERF_PID" 10 "$B_IPERF" || die "iperf3 -s did not start (logs/iperf3-server.log)"
}

# ----------------------------------------------------------------------------- proxy configs
ringlb_conf() { # target (ringlb = default transfer "auto", ringlb-copy / ringlb-splice force one)
    local t=$1 f="$OUT_DIR/conf/$1.toml" s
    {
        echo "[runtime]"
        echo "workers = $PWORKERS"
        echo "pin_cores = false"
        echo "io_uring = \"$RINGLB_IO_URING\""
        [[ -z ${RINGLB_RUNTIME:-} ]] || printf '%s\n' "$RINGLB_RUNTIME"
        for s in "${SVCS[@]}"; do
            echo
            echo "[[listener]]"
            echo "name = \"$s\""
            echo "mode = \"tcp\""
            echo "listen = \"127.0.0.1:$(port_of "$t" "$s")\""
            [[ $t != ringlb-copy ]] || echo "transfer = \"copy\""
            [[ $t != ringlb-splice ]] || echo "transfer = \"splice\""
            echo "upstream = \"$s\""
            echo "max_connections = $MAXCONN"
            echo "connect_timeout = \"1s\""
            echo "idle_timeout = \"10m\""
            [[ -z $RINGLB_EXTRA ]] || printf '%s\n' "$RINGLB_EXTRA"
        done
        for s in "${SVCS[@]}"; do
            echo
            echo "[upstream.$s]"
            echo "balance = \"round_robin\""
            case $s in
                redis) echo "servers = [{ addr = \"127.0.0.1:$B_REDIS\", weight = 1 }]";;
                http)  echo "servers = [{ addr = \"127.0.0.1:$B_HTTP1\", weight = 1 }, { addr = \"127.0.0.1:$B_HTTP2\", weight = 1 }]";;
                iperf) echo "servers = [{ addr = \"127.0.0.1:$B_IPERF\", weight = 1 }]";;
            esac
        done
    } >"$f"
    echo "$f"
}
nginx_conf() {
    local f="$OUT_DIR/conf/nginx-stream.conf" pre="$TMP/px-nginx" s
    mkdir -p "$pre"
    {
        [[ -z $NGINX_STREAM_LOAD ]] || echo "$NGINX_STREAM_LOAD"
        nginx_head "$pre" nginx-stream "$PWORKERS"
        echo "events { worker_connections $((2 * MAXCONN + 100)); }"
        echo "stream {"
        echo "    # no access_log in stream unless configured: logging is off"
        echo "    upstream redis { server 127.0.0.1:$B_REDIS; }"
        echo "    upstream http  { server 127.0.0.1:$B_HTTP1; server 127.0.0.1:$B_HTTP2; }"
        echo "    upstream iperf { server 127.0.0.1:$B_IPERF; }"
        for s in "${SVCS[@]}"; do
            echo "    server { listen 127.0.0.1:$(port_of nginx "$s"); proxy_pass $s; proxy_connect_timeout 1s; proxy_timeout 10m; }"
        done
        echo "}"
    } >"$f"
    echo "$f"
}
haproxy_conf() { # target (haproxy | haproxy-nosplice)
    local t=$1 f="$OUT_DIR/conf/$1.cfg" s
    {
        echo "global"
        echo "    nbthread $PWORKERS"
        echo "    maxconn $MAXCONN"
        echo "    # no 'log' lines: logging off"
        echo "defaults"
        echo "    mode tcp"
        echo "    timeout connect 1s"
        echo "    timeout client 10m"
        echo "    timeout server 10m"
        if [[ $t == haproxy ]]; then echo "    option splice-auto"; else echo "    # no splice"; fi
        for s in "${SVCS[@]}"; do
            echo "frontend fe_$s"
            echo "    bind 127.0.0.1:$(port_of "$t" "$s")"
            echo "    default_backend be_$s"
            echo "backend be_$s"
            echo "    balance roundrobin"
            case $s in
                redis) echo "    server s1 127.0.0.1:$B_REDIS";;
                http)  echo "    server s1 127.0.0.1:$B_HTTP1"; echo "    server s2 127.0.0.1:$B_HTTP2";;
                iperf) echo "    server s1 127.0.0.1:$B_IPERF";;
            esac
        done
    } >"$f"
    echo "$f"
}

PROXY_PID=""
start_proxy() { # target -> sets PROXY_PID; returns 1 on failure
    local t=$1 conf ports=() s
    PROXY_PID=""
    for s in "${SVCS[@]}"; do ports+=("$(port_of "$t" "$s")"); done
    case $t in
        direct) return 0;;
        ringlb|ringlb-copy|ringlb-splice)
            conf=$(ringlb_conf "$t")
            launch_ringlb "$conf" "$t" || return 1;;
        nginx)
            conf=$(nginx_conf)
            launch_nginx "$conf" nginx-stream;;
        haproxy|haproxy-nosplice)
            conf=$(haproxy_conf "$t")
            launch_haproxy "$conf" "$t" || return 1;;
    esac
    if ! wait_listen "$PROXY_PID" 15 "${ports[@]}"; then
        log "$t: not listening on ${ports[*]} within 15s (logs/)"; return 1
    fi
    for s in "${SVCS[@]}"; do
        case $s in
            redis) redis_ok "$(port_of "$t" redis)" || { log "$t: redis PING through proxy failed"; return 1; };;
            http)  http_ok "$(port_of "$t" http)" || { log "$t: HTTP GET through proxy failed"; return 1; };;
        esac
    done
    return 0
}

# ----------------------------------------------------------------------------- CPU accounting
backend_pids() { # service
    case $1 in
        redis) echo "$REDIS_PID";;
        http)  pids_with_children "$BE_NGINX_PID";;
        iperf) echo "$IPERF_PID";;
    esac
}

# ----------------------------------------------------------------------------- workloads
run_redis() { # target P
    local t=$1 P=$2 wl="redis_P$2" out="$OUT_DIR/out/r${ROUND}-$1-redis_P$2.csv" parsed rc=0
    m_begin redis
    timeout 120 "${CL[@]}" redis-benchmark -h 127.0.0.1 -p "$(port_of "$t" redis)" -t get,set -n "$REDIS_N" -c 50 -P "$P" --csv \
        </dev/null >"$out" 2>"$out.err" || rc=$?
    m_snap
    parsed=$(python3 "$SUMMARIZE" parse-redis "$out")
    if ((rc)) || ! grep -q '^get_rps ' <<<"$parsed" || ! grep -q '^set_rps ' <<<"$parsed"; then
        log "  $t $wl FAILED (rc=$rc, $out)"; note "$t" failed "$wl" 1; return 0
    fi
    m_emit "$wl" $((2 * REDIS_N)) req
    while read -r k v; do emit "$wl" "$k" "$v"; done <<<"$parsed"
    log "  $t $wl: GET $(awk '$1=="get_rps"{printf "%.0f",$2}' <<<"$parsed") SET $(awk '$1=="set_rps"{printf "%.0f",$2}' <<<"$parsed") req/s"
}
run_wrk() { # target conns
    wrk_measure "$1" "wrk_c$2" "http://127.0.0.1:$(port_of "$1" http)/" "$2"
}
run_iperf() { # target
    local t=$1 wl=iperf out="$OUT_DIR/out/r${ROUND}-$1-iperf.json" bytes rc=0
    m_begin iperf
    timeout $((IPERF_TIME + 30)) "${CL[@]}" iperf3 -c 127.0.0.1 -p "$(port_of "$t" iperf)" -t "$IPERF_TIME" -P "$IPERF_STREAMS" -J \
        </dev/null >"$out" 2>"$out.err" || rc=$?
    m_snap
    python3 "$SUMMARIZE" parse-iperf "$out" >"$out.parsed"
    bytes=$(metric_of "$out.parsed" bytes)
    if ((rc)) || [[ -z $bytes || $bytes == 0 ]]; then
        log "  $t iperf FAILED (rc=$rc, $out)"; note "$t" failed iperf 1
        restart_iperf_if_stuck; return 0
    fi
    m_emit "$wl" "$bytes" bytes
    while read -r k v; do emit "$wl" "$k" "$v"; done <"$out.parsed"
    log "  $t iperf: $(metric_of "$out.parsed" gbps) Gbit/s"
}
restart_iperf_if_stuck() {
    # a failed test can leave iperf3 -s busy: restart it (ours, by PID)
    stop_pid "$IPERF_PID"; sleep 0.5; start_iperf
}
warm_up() { # target (unrecorded)
    local t=$1
    if has_wl redis; then
        timeout 60 "${CL[@]}" redis-benchmark -h 127.0.0.1 -p "$(port_of "$t" redis)" -t get -n 20000 -c 50 -q </dev/null >/dev/null 2>&1 || true
    fi
    if has_wl wrk; then
        wrk_warm "http://127.0.0.1:$(port_of "$t" http)/" "${C_LIST[0]}" "$WARMUP"
    fi
    if has_wl iperf; then
        timeout 20 "${CL[@]}" iperf3 -c 127.0.0.1 -p "$(port_of "$t" iperf)" -t 1 </dev/null >/dev/null 2>&1 || restart_iperf_if_stuck
        sleep 0.3
    fi
}

# ----------------------------------------------------------------------------- setup record
write_setup() {
    {
        echo "# Setup"
        echo
        setup_host_lines
        echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
        echo "- haproxy: $(haproxy -v 2>&1 | head -1)"
        echo "- redis: $(redis-server --version)"
        echo "- redis-benchmark: $(redis-benchmark --version 2>&1 | head -1)"
        echo "- wrk: $(wrk -v 2>&1 | head -1)"
        echo "- iperf3: $(iperf3 --version 2>&1 | head -1)"
        setup_ringlb_lines
        setup_limits_line
        echo
        echo "## Command line"
        echo
        echo '```'
        echo "ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP WORKLOADS=\"$WORKLOADS\" TARGETS=\"$TARGETS\" WRK_CONNS=\"$WRK_CONNS\" \\"
        echo "  REDIS_N=$REDIS_N REDIS_PIPELINES=\"$REDIS_PIPELINES\" IPERF_TIME=$IPERF_TIME PIN=$PIN PORT_OFFSET=$PORT_OFFSET \\"
        echo "  RINGLB=$RINGLB RINGLB_IO_URING=$RINGLB_IO_URING RINGLB_EXTRA='$RINGLB_EXTRA' RINGLB_RUNTIME='${RINGLB_RUNTIME:-}' \\"
        echo "  $0 $*"
        echo '```'
        echo
        echo "## Method"
        echo
        setup_pin_line
        echo "- Backends: redis-server (--save '' --appendonly no), nginx 1 worker \`return 200 \"hello\\n\"\` keep-alive on ports $B_HTTP1 and $B_HTTP2 (keepalive_requests 1e8), iperf3 -s. direct = client straight to the backend (first http port)."
        echo "- Proxies: ringlb L4; nginx \`stream\` proxy_pass to an upstream block; HAProxy \`mode tcp\` with \`option splice-auto\` (haproxy) and without (haproxy-nosplice). Logging off, connect timeout 1s, idle timeout 10m everywhere. Configs in conf/."
        echo "- Each round starts every target in turn (order rotated per round), runs a short unrecorded warm-up, then the workloads; the proxy is stopped (SIGTERM by PID) after its workloads."
        echo "- CPU: utime+stime from /proc/PID/stat of the proxy (nginx master + workers) and of the backend (redis-server / backend nginx master + worker / iperf3 -s) before and after each measurement; machine CPU from /proc/stat (busy = all but idle and iowait)."
        echo "- Clients: redis-benchmark -t get,set -n $REDIS_N -c 50 -P {$REDIS_PIPELINES} --csv; wrk -t1 -c{$WRK_CONNS} -d${DURATION}s --latency; iperf3 -t $IPERF_TIME -J (one stream)."
    } >"$OUT_DIR/SETUP.md"
    echo "PIN=$PIN ($(pin_summary)); $(nginx -v 2>&1 | sed 's/^nginx version: //'), HAProxy $(haproxy -v 2>&1 | head -1 | awk '{print $3}'), redis $(redis-server --version | grep -o 'v=[^ ]*' | cut -d= -f2)$(ringlb_meta); host $(hostname), kernel $(uname -r). See SETUP.md." >"$OUT_DIR/meta.txt"
}

# ----------------------------------------------------------------------------- main
run_workloads() { # target (hook of run_rounds)
    local w P C
    for w in "${WL_LIST[@]}"; do
        case $w in
            redis) for P in "${P_LIST[@]}"; do sleep "$PAUSE"; run_redis "$1" "$P"; done;;
            wrk)   for C in "${C_LIST[@]}"; do sleep "$PAUSE"; run_wrk "$1" "$C"; done;;
            iperf) sleep "$PAUSE"; run_iperf "$1";;
        esac
    done
}

write_setup "$@"
log "results: $OUT_DIR"
log "targets: ${T_LIST[*]}; workloads: ${WL_LIST[*]}; rounds: $ROUNDS; PIN=$PIN"
has_wl redis && start_redis
has_wl wrk && start_be_nginx "$B_HTTP1" "$B_HTTP2"
has_wl iperf && start_iperf
run_rounds
finish
