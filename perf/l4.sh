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
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}            # wrk seconds
WARMUP=${WARMUP:-2}                 # wrk warm-up seconds (unrecorded)
WORKLOADS=${WORKLOADS:-"redis wrk iperf"}
TARGETS=${TARGETS:-"direct ringlb nginx haproxy haproxy-nosplice"}
WRK_CONNS=${WRK_CONNS:-64}          # e.g. "64 256"
REDIS_N=${REDIS_N:-200000}
REDIS_PIPELINES=${REDIS_PIPELINES:-"1 16"}
IPERF_TIME=${IPERF_TIME:-5}
IDLE_WAIT=${IDLE_WAIT:-30}          # max seconds to wait for the machine to be < 15% busy before a round
PIN=${PIN:-1}                       # 1: proxy on CPU 0, clients+backends on CPU 1, 1 worker; 0: unpinned, 2 workers
RINGLB_DEFAULT="$REPO_ROOT/target/release/ringlb"
RINGLB=${RINGLB:-$RINGLB_DEFAULT}
RINGLB_EXTRA=${RINGLB_EXTRA:-}      # extra TOML lines put in every ringlb [[listener]]
RINGLB_IO_URING=${RINGLB_IO_URING:-auto}
PORT_OFFSET=${PORT_OFFSET:-0}
PAUSE=${PAUSE:-1}                   # seconds between measurements

WORKLOADS=${WORKLOADS//,/ }
TARGETS=${TARGETS//,/ }
WRK_CONNS=${WRK_CONNS//,/ }
REDIS_PIPELINES=${REDIS_PIPELINES//,/ }
read -ra WL_LIST <<<"$WORKLOADS"
read -ra T_LIST <<<"$TARGETS"
read -ra C_LIST <<<"$WRK_CONNS"
read -ra P_LIST <<<"$REDIS_PIPELINES"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

declare -A TIDX=([direct]=0 [ringlb]=1 [nginx]=2 [haproxy]=3 [haproxy-nosplice]=4 [ringlb-copy]=5 [ringlb-splice]=6)
for t in "${T_LIST[@]}"; do [[ -n ${TIDX[$t]+x} ]] || die "unknown target '$t' (direct ringlb ringlb-copy ringlb-splice nginx haproxy haproxy-nosplice)"; done
for w in "${WL_LIST[@]}"; do case $w in redis|wrk|iperf) ;; *) die "unknown workload '$w' (redis wrk iperf)";; esac; done
[[ ${#T_LIST[@]} -gt 0 && ${#WL_LIST[@]} -gt 0 ]] || die "empty TARGETS or WORKLOADS"
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 ]] || die "ROUNDS must be >= 1"
has_wl() { local w; for w in "${WL_LIST[@]}"; do [[ $w == "$1" ]] && return 0; done; return 1; }
has_t()  { local t; for t in "${T_LIST[@]}"; do [[ $t == "$1" ]] && return 0; done; return 1; }

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

if [[ $PIN == 1 ]]; then
    PX=(taskset -c 0); CL=(taskset -c 1); PWORKERS=1
else
    PX=(); CL=(); PWORKERS=2
fi

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
    if ((${#need[@]})); then
        [[ $EUID -eq 0 ]] || die "missing packages: ${need[*]} (run as root, or install them)"
        log "installing: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
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

# ringlb binary: build it (release) from the repo root if the default path is missing
if has_t ringlb || has_t ringlb-copy || has_t ringlb-splice; then
    if [[ ! -x $RINGLB ]]; then
        if [[ $RINGLB == "$RINGLB_DEFAULT" ]]; then
            log "ringlb not built: cargo build --release in $REPO_ROOT"
            (cd "$REPO_ROOT" && cargo build --release) || die "cargo build --release failed (run with TARGETS without ringlb to skip it)"
        else
            die "RINGLB=$RINGLB is not an executable"
        fi
    fi
    RINGLB_VERSION=$("$RINGLB" --version 2>&1) || die "'$RINGLB --version' failed: $RINGLB_VERSION"
fi

# ----------------------------------------------------------------------------- run dir
if [[ -z ${OUT_DIR:-} ]]; then
    base="$SCRIPT_DIR/runs/$(date +%Y-%m-%d)-$(hostname)"
    [[ $PIN == 1 ]] || base+="-unpinned"
    OUT_DIR=$base; n=2
    while [[ -e $OUT_DIR ]]; do OUT_DIR="$base-$n"; n=$((n + 1)); done
fi
mkdir -p "$OUT_DIR/conf" "$OUT_DIR/logs" "$OUT_DIR/out"
RAW="$OUT_DIR/raw.csv"
[[ -s $RAW ]] || echo "round,target,workload,metric,value" >"$RAW"
TMP=$(mktemp -d /tmp/ringlb-perf.XXXXXX)

# ----------------------------------------------------------------------------- processes
declare -A RUNNING=()   # pid -> name, everything this script started and has not stopped yet

is_alive() { # pid: exists and is not a zombie
    local st
    { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
    st=${st##*) }
    [[ ${st:0:1} != Z ]]
}
children_of() { # direct children of pid
    local f line rest
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        rest=${line##*) }; read -r _ ppid _ <<<"$rest"
        [[ $ppid == "$1" ]] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
    return 0
}
stop_pid() { # pid [signal]
    local pid=$1 sig=${2:-TERM} i kids
    [[ -n ${RUNNING[$pid]+x} ]] || return 0
    kids=$(children_of "$pid")
    kill -"$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do is_alive "$pid" || break; sleep 0.05; done
    if is_alive "$pid"; then log "pid $pid (${RUNNING[$pid]}) did not stop on SIG$sig: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
    # children that outlived their parent (nginx workers): only if still nginx/ours
    for k in $kids; do
        if is_alive "$k" && [[ $(cat "/proc/$k/comm" 2>/dev/null) == "$(basename "${RUNNING[$pid]%% *}")"* ]]; then
            kill -KILL "$k" 2>/dev/null || true
        fi
    done
    unset "RUNNING[$pid]"
}
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${!RUNNING[@]}"; do stop_pid "$pid"; done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=65536
# same connection cap for every proxy (ringlb max_connections = 5000); fits ulimit -n
MAXCONN=5000
((NOFILE >= 2 * MAXCONN + 200)) || MAXCONN=$(((NOFILE - 200) / 2))

listening() { ss -ltnH "sport = :$1" 2>/dev/null | grep -q .; }
wait_listen() { # pid timeout_s port...
    local pid=$1 to=$2 p ok deadline
    shift 2
    deadline=$(($(date +%s%N) + to * 1000000000))
    while (($(date +%s%N) < deadline)); do
        is_alive "$pid" || return 1
        ok=1
        for p in "$@"; do listening "$p" || { ok=0; break; }; done
        ((ok)) && return 0
        sleep 0.05
    done
    return 1
}
redis_ok() { [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "$1" PING 2>/dev/null) == PONG ]]; }
http_ok() {
    local r
    r=$(timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$1"'; printf "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" >&3; cat <&3' 2>/dev/null) || true
    [[ $r == *hello* ]]
}

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
for p in "${all_ports[@]}"; do listening "$p" && die "port $p is already in use (set PORT_OFFSET)"; done

# ----------------------------------------------------------------------------- backends
REDIS_PID=""; BE_NGINX_PID=""; IPERF_PID=""
start_redis() {
    mkdir -p "$TMP/redis"
    "${CL[@]}" redis-server --port "$B_REDIS" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$TMP/redis" --logfile "$OUT_DIR/logs/redis.log" --daemonize no --protected-mode no \
        </dev/null >/dev/null 2>&1 &
    REDIS_PID=$!; RUNNING[$REDIS_PID]="redis-server"
    wait_listen "$REDIS_PID" 10 "$B_REDIS" && redis_ok "$B_REDIS" || die "redis-server did not start (logs/redis.log)"
}
start_be_nginx() {
    local pre="$TMP/be-nginx" conf="$OUT_DIR/conf/backend-nginx.conf"
    mkdir -p "$pre/tmp"
    cat >"$conf" <<EOF
# backend: 1 worker, "hello" with keep-alive on two ports
worker_processes 1;
daemon off;
master_process on;
pid $pre/nginx.pid;
error_log $OUT_DIR/logs/backend-nginx.error.log crit;
worker_rlimit_nofile $NOFILE;
events { worker_connections 16384; }
http {
    access_log off;
    default_type text/plain;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
    client_body_temp_path $pre/tmp/body;
    proxy_temp_path $pre/tmp/proxy;
    fastcgi_temp_path $pre/tmp/fastcgi;
    uwsgi_temp_path $pre/tmp/uwsgi;
    scgi_temp_path $pre/tmp/scgi;
    server {
        listen 127.0.0.1:$B_HTTP1;
        listen 127.0.0.1:$B_HTTP2;
        location / { return 200 "hello\n"; }
    }
}
EOF
    "${CL[@]}" nginx -p "$pre" -c "$conf" -e "$OUT_DIR/logs/backend-nginx.error.log" </dev/null \
        >>"$OUT_DIR/logs/backend-nginx.out" 2>&1 &
    BE_NGINX_PID=$!; RUNNING[$BE_NGINX_PID]="nginx backend"
    wait_listen "$BE_NGINX_PID" 10 "$B_HTTP1" "$B_HTTP2" && http_ok "$B_HTTP1" && http_ok "$B_HTTP2" \
        || die "backend nginx did not start (logs/backend-nginx.*)"
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
        echo "worker_processes $PWORKERS;"
        echo "daemon off;"
        echo "master_process on;"
        echo "pid $pre/nginx.pid;"
        echo "error_log $OUT_DIR/logs/nginx-stream.error.log crit;"
        echo "worker_rlimit_nofile $NOFILE;"
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
            # `ringlb check` exits 2 with the offending key when the config is invalid
            local crc=0
            "$RINGLB" check -c "$conf" >>"$OUT_DIR/logs/ringlb.log" 2>&1 || crc=$?
            ((crc != 2)) || { log "ringlb: config rejected: $(tail -n 1 "$OUT_DIR/logs/ringlb.log")"; return 1; }
            RUST_LOG=${RUST_LOG:-warn} "${PX[@]}" "$RINGLB" run -c "$conf" </dev/null >>"$OUT_DIR/logs/ringlb.log" 2>&1 &
            PROXY_PID=$!; RUNNING[$PROXY_PID]="$t";;
        nginx)
            conf=$(nginx_conf)
            "${PX[@]}" nginx -p "$TMP/px-nginx" -c "$conf" -e "$OUT_DIR/logs/nginx-stream.error.log" </dev/null \
                >>"$OUT_DIR/logs/nginx-stream.out" 2>&1 &
            PROXY_PID=$!; RUNNING[$PROXY_PID]="nginx stream";;
        haproxy|haproxy-nosplice)
            conf=$(haproxy_conf "$t")
            haproxy -c -q -f "$conf" >>"$OUT_DIR/logs/$t.log" 2>&1 || { log "$t: config check failed"; return 1; }
            "${PX[@]}" haproxy -db -f "$conf" </dev/null >>"$OUT_DIR/logs/$t.log" 2>&1 &
            PROXY_PID=$!; RUNNING[$PROXY_PID]="haproxy";;
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
stop_proxy() { [[ -z $PROXY_PID ]] || stop_pid "$PROXY_PID"; PROXY_PID=""; }

# ----------------------------------------------------------------------------- CPU accounting
CLK_TCK=$(getconf CLK_TCK)
proc_ticks() { # pid... -> sum of utime+stime (all threads of each process)
    local p line f t=0
    for p in "$@"; do
        { read -r line <"/proc/$p/stat"; } 2>/dev/null || continue
        read -ra f <<<"${line##*) }"
        t=$((t + f[11] + f[12]))
    done
    echo "$t"
}
machine_ticks() { # -> "busy_all busy_cpu0 busy_cpu1" (busy = total - idle - iowait)
    awk '$1 ~ /^cpu[01]?$/ { b = $2+$3+$4+$7+$8+$9; v[$1] = b }
         END { printf "%d %d %d\n", v["cpu"], v["cpu0"], v["cpu1"] }' /proc/stat
}
pids_with_children() { local p; for p in "$@"; do [[ -z $p ]] && continue; echo "$p"; children_of "$p"; done; }
backend_pids() { # service
    case $1 in
        redis) echo "$REDIS_PID";;
        http)  pids_with_children "$BE_NGINX_PID";;
        iperf) echo "$IPERF_PID";;
    esac
}

ROUND=0; TARGET=""
emit() { echo "$ROUND,$TARGET,$1,$2,$3" >>"$RAW"; }  # workload metric value
note() { echo "$ROUND,$1,_$2,$3,$4" >>"$RAW"; }      # target what metric value

M_PX=(); M_BE=()
m_begin() { # service
    mapfile -t M_PX < <(pids_with_children "$PROXY_PID")
    mapfile -t M_BE < <(backend_pids "$1")
    M_PX0=$(proc_ticks "${M_PX[@]}"); M_BE0=$(proc_ticks "${M_BE[@]}")
    read -r M_A0 M_C00 M_C10 < <(machine_ticks)
    times >"$TMP/times0"   # children's CPU (the client, once reaped); must not run in a subshell
    M_T0=$(date +%s.%N)
}
times_children_s() { awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); n += a[1] * 60 + a[2] } printf "%.3f", n }' "$1"; }
m_end() { # workload units kind(req|bytes)
    local wl=$1 units=$2 kind=$3 t1 px1 be1 a1 c01 c11 cl k v
    t1=$(date +%s.%N)
    times >"$TMP/times1"
    px1=$(proc_ticks "${M_PX[@]}"); be1=$(proc_ticks "${M_BE[@]}")
    read -r a1 c01 c11 < <(machine_ticks)
    cl=$(awk -v a="$(times_children_s "$TMP/times0")" -v b="$(times_children_s "$TMP/times1")" 'BEGIN { printf "%.3f", b - a }')
    awk -v hz="$CLK_TCK" -v px=$((px1 - M_PX0)) -v be=$((be1 - M_BE0)) -v a=$((a1 - M_A0)) \
        -v c0=$((c01 - M_C00)) -v c1=$((c11 - M_C10)) -v units="$units" -v kind="$kind" -v cl="$cl" \
        -v wall="$(awk -v a="$M_T0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')" -v direct="$([[ $TARGET == direct ]] && echo 1 || echo 0)" '
        BEGIN {
            suf = (kind == "bytes") ? "per_GB" : "per_100k_req"
            div = (kind == "bytes") ? units / 1e9 : units / 1e5
            printf "wall_s %s\n", wall
            printf "backend_cpu_s %.4f\n", be / hz
            printf "machine_cpu_s %.4f\n", a / hz
            printf "cpu0_s %.4f\n", c0 / hz
            printf "cpu1_s %.4f\n", c1 / hz
            printf "client_cpu_s %.4f\n", cl
            # machine busy time not in proxy, backend or client: softirq/kworkers + any other load
            un = a / hz - (direct ? 0 : px / hz) - be / hz - cl
            printf "unattributed_cpu_s %.4f\n", un
            if (a > 0) printf "unattributed_frac %.4f\n", un / (a / hz)
            if (div > 0) {
                printf "backend_cpu_s_%s %.5f\n", suf, be / hz / div
                printf "machine_cpu_s_%s %.5f\n", suf, a / hz / div
            }
            if (!direct) {
                printf "proxy_cpu_s %.4f\n", px / hz
                if (div > 0) printf "proxy_cpu_s_%s %.5f\n", suf, px / hz / div
                if (be > 0) printf "proxy_over_backend %.4f\n", px / be
            }
        }' | while read -r k v; do emit "$wl" "$k" "$v"; done
}
metric_of() { awk -v k="$2" '$1 == k { print $2 }' "$1"; }

# ----------------------------------------------------------------------------- workloads
run_redis() { # target P
    local t=$1 P=$2 wl="redis_P$2" out="$OUT_DIR/out/r${ROUND}-$1-redis_P$2.csv" parsed rc=0
    m_begin redis
    timeout 120 "${CL[@]}" redis-benchmark -h 127.0.0.1 -p "$(port_of "$t" redis)" -t get,set -n "$REDIS_N" -c 50 -P "$P" --csv \
        </dev/null >"$out" 2>"$out.err" || rc=$?
    parsed=$(python3 "$SUMMARIZE" parse-redis "$out")
    if ((rc)) || ! grep -q '^get_rps ' <<<"$parsed" || ! grep -q '^set_rps ' <<<"$parsed"; then
        log "  $t $wl FAILED (rc=$rc, $out)"; note "$t" failed "$wl" 1; return 0
    fi
    m_end "$wl" $((2 * REDIS_N)) req
    while read -r k v; do emit "$wl" "$k" "$v"; done <<<"$parsed"
    log "  $t $wl: GET $(awk '$1=="get_rps"{printf "%.0f",$2}' <<<"$parsed") SET $(awk '$1=="set_rps"{printf "%.0f",$2}' <<<"$parsed") req/s"
}
run_wrk() { # target conns
    local t=$1 c=$2 wl="wrk_c$2" out="$OUT_DIR/out/r${ROUND}-$1-wrk_c$2.txt" parsed rc=0 reqs errs
    m_begin http
    timeout $((DURATION + 30)) "${CL[@]}" wrk -t1 -c"$c" -d"${DURATION}s" --latency "http://127.0.0.1:$(port_of "$t" http)/" \
        </dev/null >"$out" 2>&1 || rc=$?
    python3 "$SUMMARIZE" parse-wrk "$out" >"$out.parsed"
    reqs=$(metric_of "$out.parsed" requests)
    if ((rc)) || [[ -z $reqs || $reqs == 0 ]]; then
        log "  $t $wl FAILED (rc=$rc, $out)"; note "$t" failed "$wl" 1; return 0
    fi
    m_end "$wl" "$reqs" req
    while read -r k v; do emit "$wl" "$k" "$v"; done <"$out.parsed"
    errs=$(( $(metric_of "$out.parsed" socket_errors) + $(metric_of "$out.parsed" non2xx) ))
    log "  $t $wl: $(metric_of "$out.parsed" rps) req/s, p99 $(metric_of "$out.parsed" lat_p99_ms) ms, errors $errs"
}
run_iperf() { # target
    local t=$1 wl=iperf out="$OUT_DIR/out/r${ROUND}-$1-iperf.json" bytes rc=0
    m_begin iperf
    timeout $((IPERF_TIME + 30)) "${CL[@]}" iperf3 -c 127.0.0.1 -p "$(port_of "$t" iperf)" -t "$IPERF_TIME" -J \
        </dev/null >"$out" 2>"$out.err" || rc=$?
    python3 "$SUMMARIZE" parse-iperf "$out" >"$out.parsed"
    bytes=$(metric_of "$out.parsed" bytes)
    if ((rc)) || [[ -z $bytes || $bytes == 0 ]]; then
        log "  $t iperf FAILED (rc=$rc, $out)"; note "$t" failed iperf 1
        restart_iperf_if_stuck; return 0
    fi
    m_end "$wl" "$bytes" bytes
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
        timeout $((WARMUP + 20)) "${CL[@]}" wrk -t1 -c"${C_LIST[0]}" -d"${WARMUP}s" "http://127.0.0.1:$(port_of "$t" http)/" </dev/null >/dev/null 2>&1 || true
    fi
    if has_wl iperf; then
        timeout 20 "${CL[@]}" iperf3 -c 127.0.0.1 -p "$(port_of "$t" iperf)" -t 1 </dev/null >/dev/null 2>&1 || restart_iperf_if_stuck
        sleep 0.3
    fi
}

# ----------------------------------------------------------------------------- setup record
write_setup() {
    local ver
    {
        echo "# Setup"
        echo
        echo "- date: $(date -Is)"
        echo "- host: $(hostname)"
        echo "- kernel: $(uname -srvm)"
        echo "- CPU: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) cores online"
        echo "- memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
        echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
        echo "- haproxy: $(haproxy -v 2>&1 | head -1)"
        echo "- redis: $(redis-server --version)"
        echo "- redis-benchmark: $(redis-benchmark --version 2>&1 | head -1)"
        echo "- wrk: $(wrk -v 2>&1 | head -1)"
        echo "- iperf3: $(iperf3 --version 2>&1 | head -1)"
        if has_t ringlb; then
            echo "- ringlb: $RINGLB_VERSION ($RINGLB)"
            ver=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "no commit")
            echo "- ringlb repo: $REPO_ROOT @ $ver$(git -C "$REPO_ROOT" status --porcelain 2>/dev/null | grep -q . && echo ' (dirty)')"
        fi
        echo "- somaxconn: $(cat /proc/sys/net/core/somaxconn), ip_local_port_range: $(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range), ulimit -n: $(ulimit -n)"
        echo
        echo "## Command line"
        echo
        echo '```'
        echo "ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP WORKLOADS=\"$WORKLOADS\" TARGETS=\"$TARGETS\" WRK_CONNS=\"$WRK_CONNS\" \\"
        echo "  REDIS_N=$REDIS_N REDIS_PIPELINES=\"$REDIS_PIPELINES\" IPERF_TIME=$IPERF_TIME PIN=$PIN PORT_OFFSET=$PORT_OFFSET \\"
        echo "  RINGLB=$RINGLB RINGLB_IO_URING=$RINGLB_IO_URING RINGLB_EXTRA='$RINGLB_EXTRA' \\"
        echo "  $0 $*"
        echo '```'
        echo
        echo "## Method"
        echo
        if [[ $PIN == 1 ]]; then
            echo "- Pinned: proxy \`taskset -c 0\`; clients and backends \`taskset -c 1\`; 1 worker per proxy (nginx worker_processes 1, HAProxy nbthread 1, ringlb workers = 1, pin_cores = false)."
        else
            echo "- Unpinned: no taskset; 2 workers per proxy (nginx worker_processes 2, HAProxy nbthread 2, ringlb workers = 2, pin_cores = false)."
        fi
        echo "- Backends: redis-server (--save '' --appendonly no), nginx 1 worker \`return 200 \"hello\\n\"\` keep-alive on ports $B_HTTP1 and $B_HTTP2 (keepalive_requests 1e8), iperf3 -s. direct = client straight to the backend (first http port)."
        echo "- Proxies: ringlb L4; nginx \`stream\` proxy_pass to an upstream block; HAProxy \`mode tcp\` with \`option splice-auto\` (haproxy) and without (haproxy-nosplice). Logging off, connect timeout 1s, idle timeout 10m everywhere. Configs in conf/."
        echo "- Each round starts every target in turn (order rotated per round), runs a short unrecorded warm-up, then the workloads; the proxy is stopped (SIGTERM by PID) after its workloads."
        echo "- CPU: utime+stime from /proc/PID/stat of the proxy (nginx master + workers) and of the backend (redis-server / backend nginx master + worker / iperf3 -s) before and after each measurement; machine CPU from /proc/stat (busy = all but idle and iowait)."
        echo "- Clients: redis-benchmark -t get,set -n $REDIS_N -c 50 -P {$REDIS_PIPELINES} --csv; wrk -t1 -c{$WRK_CONNS} -d${DURATION}s --latency; iperf3 -t $IPERF_TIME -J (one stream)."
    } >"$OUT_DIR/SETUP.md"
    echo "PIN=$PIN ($([[ $PIN == 1 ]] && echo "proxy on CPU 0, clients+backends on CPU 1, 1 worker per proxy" || echo "unpinned, 2 workers per proxy")); $(nginx -v 2>&1 | sed 's/^nginx version: //'), HAProxy $(haproxy -v 2>&1 | head -1 | awk '{print $3}'), redis $(redis-server --version | grep -o 'v=[^ ]*' | cut -d= -f2)$(has_t ringlb && echo ", $RINGLB_VERSION"); host $(hostname), kernel $(uname -r). See SETUP.md." >"$OUT_DIR/meta.txt"
}

machine_busy_pct() { # over ~1s
    local a0 t0 a1 t1
    read -r a0 t0 < <(awk '$1=="cpu"{t=0; for(i=2;i<=9;i++) t+=$i; print $2+$3+$4+$7+$8+$9, t}' /proc/stat)
    sleep 1
    read -r a1 t1 < <(awk '$1=="cpu"{t=0; for(i=2;i<=9;i++) t+=$i; print $2+$3+$4+$7+$8+$9, t}' /proc/stat)
    awk -v a=$((a1 - a0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.1f", (t > 0) ? 100 * a / t : 0 }'
}

# ----------------------------------------------------------------------------- main
write_setup "$@"
log "results: $OUT_DIR"
log "targets: ${T_LIST[*]}; workloads: ${WL_LIST[*]}; rounds: $ROUNDS; PIN=$PIN"
has_wl redis && start_redis
has_wl wrk && start_be_nginx
has_wl iperf && start_iperf

n=${#T_LIST[@]}
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
    busy=$(machine_busy_pct); waited=0
    while awk -v b="$busy" 'BEGIN { exit !(b > 15) }' && ((waited < IDLE_WAIT)); do
        log "machine ${busy}% busy before round $ROUND: waiting (up to ${IDLE_WAIT}s)"
        sleep 2; waited=$((waited + 3)); busy=$(machine_busy_pct)
    done
    tw=$(ss -tanH state time-wait 2>/dev/null | wc -l)
    note _machine pre_round busy_pct "$busy"
    note _machine pre_round time_wait "$tw"
    log "round $ROUND/$ROUNDS: machine busy ${busy}% before the round, TIME_WAIT $tw"
    awk -v b="$busy" 'BEGIN { exit !(b > 15) }' && log "WARNING: machine is ${busy}% busy before the round: figures will be noisy"
    order=()
    for ((i = 0; i < n; i++)); do order+=("${T_LIST[$(((i + ROUND - 1) % n))]}"); done
    for TARGET in "${order[@]}"; do
        log "round $ROUND: $TARGET"
        if ! start_proxy "$TARGET"; then
            note "$TARGET" failed start 1
            tail -n 5 "$OUT_DIR"/logs/*"${TARGET%%-*}"* 2>/dev/null | sed 's/^/    /' >&2 || true
            stop_proxy; continue
        fi
        warm_up "$TARGET"
        for w in "${WL_LIST[@]}"; do
            case $w in
                redis) for P in "${P_LIST[@]}"; do sleep "$PAUSE"; run_redis "$TARGET" "$P"; done;;
                wrk)   for C in "${C_LIST[@]}"; do sleep "$PAUSE"; run_wrk "$TARGET" "$C"; done;;
                iperf) sleep "$PAUSE"; run_iperf "$TARGET";;
            esac
        done
        if [[ -n $PROXY_PID ]] && ! is_alive "$PROXY_PID"; then
            log "$TARGET died during the round"; note "$TARGET" failed died 1
        fi
        stop_proxy
        sleep "$PAUSE"
    done
done
ROUND=0; TARGET=""

log "summary: $OUT_DIR/summary.md"
python3 "$SUMMARIZE" summarize "$OUT_DIR"
if grep -q ',_failed,' "$RAW"; then
    log "some measurements failed: $(grep ',_failed,' "$RAW" | cut -d, -f1,2,4 | tr '\n' ' ')"
    exit 2
fi
