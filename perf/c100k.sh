#!/usr/bin/env bash
# perf/c100k.sh — C100K measurements for ringlb (L4) against nginx `stream` and HAProxy `mode tcp`:
#   1. hold: N concurrent idle proxied connections (default 100,000; it reports how many the
#      machine's limits allowed and which limit stopped it), a sample echoing while all are open,
#      the proxy's RSS and open fds at 0/25/50/75/100% -> RSS and fds per idle connection (slopes)
#   2. rate: short-lived connections per second (connect, 64 bytes, echo, close), every target and
#      direct, same run, rounds in rotated order
#   3. overload (ringlb): max_connections M < clients: fd count bounded, nothing accepted then
#      dropped, waiting clients served as others leave
# Client and backend: perf/loadtool (a small separate cargo project). Method: perf/README.md.
# Every process started here is tracked by PID and stopped by the EXIT trap.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)

# ----------------------------------------------------------------------------- knobs
N=${N:-100000}                        # connections to try in the hold test
WORKERS=${WORKERS:-1}                 # workers per proxy; 1 = proxy pinned to CPU 0, clients+backend to CPU 1
TARGETS=${TARGETS:-"ringlb nginx haproxy"}
PARTS=${PARTS:-"hold rate overload"}  # subset to run
RATE_DURATION=${RATE_DURATION:-5}     # seconds per rate measurement
RATE_ROUNDS=${RATE_ROUNDS:-5}
RATE_CONC=${RATE_CONC:-64}            # concurrent short-lived connections
RATE_WARMUP=${RATE_WARMUP:-1}         # unrecorded seconds before each rate measurement
CLOSE=${CLOSE:-rst}                   # rate/hold client close: rst (SO_LINGER 0) or fin
OVERLOAD_MAX=${OVERLOAD_MAX:-200}     # ringlb max_connections in the overload check (0 = skip it)
OVERLOAD_CLIENTS=${OVERLOAD_CLIENTS:-300}
CHECKPOINTS=${CHECKPOINTS:-"0 25 50 75 100"}   # % of the reachable count; 100 = where it stopped
SOURCES=${SOURCES:-8}                 # client source addresses 127.0.0.2 .. 127.0.0.(SOURCES+1)
BACKEND_PORTS=${BACKEND_PORTS:-4}     # echo backend ports (proxy -> backend destinations)
HOLD_CONC=${HOLD_CONC:-128}           # connection attempts in flight in the hold test
HOLD_ECHO_TIMEOUT_MS=${HOLD_ECHO_TIMEOUT_MS:-3000}  # no echo by then = not proxied (waits in a full accept queue)
HOLD_OPEN_TIMEOUT=${HOLD_OPEN_TIMEOUT:-180}  # seconds for the opening phase of one target
SAMPLE=${SAMPLE:-200}                 # connections re-checked (echo) at 100% while all are held
PORT_BASE=${PORT_BASE:-19100}         # backends PORT_BASE+1.., proxies PORT_BASE+51..54
PAUSE=${PAUSE:-1}
IDLE_MAX=${IDLE_MAX:-15}              # % machine busy above which a rate measurement waits (other load)
IDLE_WAIT=${IDLE_WAIT:-60}
RATE_RETRIES=${RATE_RETRIES:-2}       # re-measure a disturbed rate measurement this many times
RATE_OTHER_MAX=${RATE_OTHER_MAX:-0.3} # CPU-s per s not in proxy/backend/client above which it counts as disturbed
RINGLB=${RINGLB:-$REPO_ROOT/target/release/ringlb}
LOADTOOL_DIR="$SCRIPT_DIR/loadtool"
LOADTOOL=${LOADTOOL:-$LOADTOOL_DIR/target/release/loadtool}
PERF_LOCK=${PERF_LOCK:-}              # optional: wait while this file exists before each heavy step
PERF_LOCK_WAIT=${PERF_LOCK_WAIT:-2400}

TARGETS=${TARGETS//,/ }
CHECKPOINTS=${CHECKPOINTS//,/ }
PARTS=${PARTS//,/ }
read -ra T_LIST <<<"$TARGETS"
read -ra CP_LIST <<<"$CHECKPOINTS"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for t in "${T_LIST[@]}"; do case $t in ringlb|nginx|haproxy) ;; *) die "unknown target '$t' (ringlb nginx haproxy)";; esac; done
for v in N WORKERS RATE_ROUNDS RATE_CONC OVERLOAD_MAX OVERLOAD_CLIENTS SOURCES BACKEND_PORTS HOLD_CONC SAMPLE PORT_BASE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number (got '${!v}')"
done
((N >= 1 && WORKERS >= 1 && SOURCES >= 1 && SOURCES <= 250 && BACKEND_PORTS >= 1 && BACKEND_PORTS <= 40)) \
    || die "need N >= 1, WORKERS >= 1, 1 <= SOURCES <= 250, 1 <= BACKEND_PORTS <= 40"
[[ $CLOSE == rst || $CLOSE == fin ]] || die "CLOSE must be rst or fin"
has_t() { local t; for t in "${T_LIST[@]}"; do [[ $t == "$1" ]] && return 0; done; return 1; }
has_part() { [[ " $PARTS " == *" $1 "* ]]; }
for p in $PARTS; do case $p in hold|rate|overload) ;; *) die "unknown part '$p' (hold rate overload)";; esac; done

declare -A PPORT=([ringlb]=$((PORT_BASE + 51)) [nginx]=$((PORT_BASE + 52)) [haproxy]=$((PORT_BASE + 53)))
P_OVERLOAD=$((PORT_BASE + 54))
BE_PORTS=(); for ((i = 1; i <= BACKEND_PORTS; i++)); do BE_PORTS+=($((PORT_BASE + i))); done
BE_LISTEN=$(printf '127.0.0.1:%s,' "${BE_PORTS[@]}"); BE_LISTEN=${BE_LISTEN%,}
SRC_LIST=$(for ((i = 2; i < SOURCES + 2; i++)); do printf '127.0.0.%d,' "$i"; done); SRC_LIST=${SRC_LIST%,}

if ((WORKERS == 1)); then
    PX=(taskset -c 0); CL=(taskset -c 1)
else
    PX=(); CL=()
fi

wait_lock() { # before each heavy step
    [[ -n $PERF_LOCK ]] || return 0
    local waited=0
    while [[ -e $PERF_LOCK ]] && ((waited < PERF_LOCK_WAIT)); do
        ((waited % 60 == 0)) && log "$PERF_LOCK exists: waiting (up to ${PERF_LOCK_WAIT}s)"
        sleep 5; waited=$((waited + 5))
    done
    [[ ! -e $PERF_LOCK ]] || die "$PERF_LOCK still exists after ${PERF_LOCK_WAIT}s"
}

# ----------------------------------------------------------------------------- install + build
nginx_modules_dir() {
    local d
    d=$(nginx -V 2>&1 | grep -o -- '--modules-path=[^ ]*' | cut -d= -f2 || true)
    echo "${d:-/usr/lib/nginx/modules}"
}
install_missing() {
    local need=()
    if has_t haproxy; then command -v haproxy >/dev/null 2>&1 || need+=(haproxy); fi
    if has_t nginx; then
        if ! command -v nginx >/dev/null 2>&1; then
            need+=(nginx libnginx-mod-stream)
        elif nginx -V 2>&1 | grep -q -- '--with-stream=dynamic' && [[ ! -e $(nginx_modules_dir)/ngx_stream_module.so ]]; then
            need+=(libnginx-mod-stream)
        fi
    fi
    command -v ss >/dev/null 2>&1 || need+=(iproute2)
    command -v taskset >/dev/null 2>&1 || need+=(util-linux)
    command -v python3 >/dev/null 2>&1 || need+=(python3)
    if ((${#need[@]})); then
        [[ $EUID -eq 0 ]] || die "missing packages: ${need[*]} (run as root, or install them)"
        log "installing: ${need[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}
install_missing
NGINX_STREAM_LOAD=""
if has_t nginx; then
    if nginx -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
        NGINX_STREAM_LOAD="load_module $(nginx_modules_dir)/ngx_stream_module.so;"
    elif ! nginx -V 2>&1 | grep -q -- '--with-stream'; then
        die "this nginx has no stream module"
    fi
fi

if has_t ringlb || { has_part overload && ((OVERLOAD_MAX > 0)); }; then
    [[ -x $RINGLB ]] || die "ringlb binary not found at $RINGLB: build it first (cd $REPO_ROOT && cargo build --release), or set RINGLB="
    RINGLB_VERSION=$("$RINGLB" --version 2>&1) || die "'$RINGLB --version' failed: $RINGLB_VERSION"
fi

if [[ $LOADTOOL == "$LOADTOOL_DIR/target/release/loadtool" ]]; then
    command -v cargo >/dev/null 2>&1 || die "cargo is needed to build perf/loadtool (https://rustup.rs)"
    wait_lock
    log "building perf/loadtool (cargo build --release, its own target dir)"
    cargo build --release --quiet --manifest-path "$LOADTOOL_DIR/Cargo.toml" --target-dir "$LOADTOOL_DIR/target" \
        || die "cargo build of perf/loadtool failed"
fi
[[ -x $LOADTOOL ]] || die "loadtool not found at $LOADTOOL"

# ----------------------------------------------------------------------------- limits
# RLIMIT_NOFILE: raise the hard limit if we may (root outside a container can), then soft = hard.
NOFILE_HARD0=$(ulimit -Hn)
WANT_NOFILE=$((2 * N + 1000))
RAISE_NOTE="hard limit kept at $NOFILE_HARD0"
if [[ $NOFILE_HARD0 != unlimited ]] && ((NOFILE_HARD0 < WANT_NOFILE)); then
    if err=$(ulimit -Hn "$WANT_NOFILE" 2>&1); then
        ulimit -Hn "$WANT_NOFILE"
        RAISE_NOTE="hard limit raised from $NOFILE_HARD0 to $WANT_NOFILE"
    else
        RAISE_NOTE="raising the hard limit from $NOFILE_HARD0 to $WANT_NOFILE was refused (${err##*: })"
    fi
fi
ulimit -Sn "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
log "RLIMIT_NOFILE: soft=hard=$NOFILE per process ($RAISE_NOTE)"
PORT_RANGE=$(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range)
read -r PR_LO PR_HI <<<"$PORT_RANGE"
EPHEMERAL=$((PR_HI - PR_LO + 1))

# what each process can hold with one fd limit each (a few fds for stdio, epoll, listeners)
LT_BUDGET=$((NOFILE - 32))             # load tool: 1 fd per client connection
BE_BUDGET=$((NOFILE - 32 - BACKEND_PORTS))   # echo backend: 1 fd per connection
HAPROXY_MAXCONN=$(((NOFILE - 100) / 2))      # 2 fds per proxied connection, rest reserved
NGINX_WC=$NOFILE                             # worker_connections = fd limit (each proxied connection takes 2)

# ----------------------------------------------------------------------------- run dir
if [[ -z ${OUT_DIR:-} ]]; then
    base="$SCRIPT_DIR/runs/$(date +%Y-%m-%d)-$(hostname)-c100k"
    OUT_DIR=$base; n=2
    while [[ -e $OUT_DIR ]]; do OUT_DIR="$base-$n"; n=$((n + 1)); done
fi
mkdir -p "$OUT_DIR/conf" "$OUT_DIR/logs" "$OUT_DIR/out"
HOLD_CSV="$OUT_DIR/hold.csv"; RATE_CSV="$OUT_DIR/rate.csv"; RES_CSV="$OUT_DIR/results.csv"
echo "target,label,pct,open,rss_kb,fds,procs,backend_fds,loadtool_fds,tcp_inuse,tcp_mem_pages" >"$HOLD_CSV"
echo "round,target,try,secs,ok,cps,errors,err,p50_us,p99_us,proxy_cpu_s,backend_cpu_s,client_cpu_s,machine_cpu_s,cpu0_busy,cpu1_busy,other_cpu_per_s,disturbed,busy_pct_before,time_wait_before" >"$RATE_CSV"
echo "target,key,value" >"$RES_CSV"
res() { local v=${3//,/;}; echo "$1,$2,$v" >>"$RES_CSV"; }  # target key value (commas -> ;)
TMP=$(mktemp -d /tmp/ringlb-c100k.XXXXXX)

# ----------------------------------------------------------------------------- processes
declare -A RUNNING=()   # pid -> name: everything started here and not stopped yet

is_alive() { # pid: exists and is not a zombie
    local st
    { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
    st=${st##*) }
    [[ ${st:0:1} != Z ]]
}
children_of() { # direct children of pid
    local f line rest ppid
    for f in /proc/[0-9]*/stat; do
        { read -r line <"$f"; } 2>/dev/null || continue
        rest=${line##*) }; read -r _ ppid _ <<<"$rest"
        [[ $ppid == "$1" ]] && { f=${f#/proc/}; echo "${f%/stat}"; }
    done
    return 0
}
stop_pid() { # pid [signal]
    local pid=$1 sig=${2:-TERM} i kids k comm
    [[ -n ${RUNNING[$pid]+x} ]] || return 0
    kids=$(children_of "$pid")
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    kill -"$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do is_alive "$pid" || break; sleep 0.05; done
    if is_alive "$pid"; then log "pid $pid (${RUNNING[$pid]}) did not stop on SIG$sig: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    wait "$pid" 2>/dev/null || true
    # children that outlived their parent (nginx workers): only if still the same program
    for k in $kids; do
        if [[ -n $comm ]] && is_alive "$k" && [[ $(cat "/proc/$k/comm" 2>/dev/null) == "$comm"* ]]; then
            kill -KILL "$k" 2>/dev/null || true
        fi
    done
    unset "RUNNING[$pid]"
}
track() { RUNNING[$1]=$2; }  # pid name
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${!RUNNING[@]}"; do stop_pid "$pid"; done
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

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
echo_ok() { # port: one echo through it
    local r
    r=$(timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$1"'; printf "c100k-ping\n" >&3; head -c 11 <&3' 2>/dev/null) || true
    [[ $r == c100k-ping* ]]
}
kv() { # line key -> value of key=value
    awk -v k="$2" '{ for (i = 1; i <= NF; i++) if (index($i, k "=") == 1) { print substr($i, length(k) + 2); exit } }' <<<"$1"
}
wait_line() { # file ERE nth pid timeout_s -> prints the nth matching line; 1 if the pid died or timed out first
    local f=$1 re=$2 nth=$3 pid=$4 to=$5 deadline line
    deadline=$(($(date +%s) + to))
    while :; do
        line=$(grep -E "$re" "$f" 2>/dev/null | sed -n "${nth}p" || true)
        [[ -n $line ]] && { echo "$line"; return 0; }
        if ! is_alive "$pid"; then
            sleep 0.1
            line=$(grep -E "$re" "$f" 2>/dev/null | sed -n "${nth}p" || true)
            [[ -n $line ]] && { echo "$line"; return 0; }
            return 1
        fi
        (($(date +%s) < deadline)) || return 1
        sleep 0.05
    done
}
wait_exit() { # pid timeout_s -> exit code (124 on timeout: then stopped)
    local pid=$1 to=$2 i rc=0
    for ((i = 0; i < to * 20; i++)); do is_alive "$pid" || break; sleep 0.05; done
    if is_alive "$pid"; then stop_pid "$pid"; echo 124; return 0; fi
    wait "$pid" 2>/dev/null || rc=$?
    unset "RUNNING[$pid]"
    echo "$rc"
}

# ----------------------------------------------------------------------------- /proc sampling
rss_kb() { local t=0 p v; for p in "$@"; do v=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null || true); t=$((t + ${v:-0})); done; echo "$t"; }
fd_count() { local t=0 p n; for p in "$@"; do n=$(ls -U "/proc/$p/fd" 2>/dev/null | wc -l || true); t=$((t + ${n:-0})); done; echo "$t"; }
nofile_of() { awk '/^Max open files/ { print $4 }' "/proc/$1/limits" 2>/dev/null || true; }
CLK_TCK=$(getconf CLK_TCK)
proc_ticks() { # pid... -> utime+stime (all threads)
    local p line f t=0
    for p in "$@"; do
        { read -r line <"/proc/$p/stat"; } 2>/dev/null || continue
        read -ra f <<<"${line##*) }"
        t=$((t + f[11] + f[12]))
    done
    echo "$t"
}
machine_ticks() { # -> "all cpu0 cpu1" busy ticks (all but idle and iowait)
    awk '$1 ~ /^cpu[01]?$/ { v[$1] = $2+$3+$4+$7+$8+$9 } END { printf "%d %d %d\n", v["cpu"], v["cpu0"], v["cpu1"] }' /proc/stat
}
tcp_sockstat() { awk '$1 == "TCP:" { for (i = 2; i < NF; i += 2) { if ($i == "inuse") u = $(i+1); if ($i == "mem") m = $(i+1) } print u + 0, m + 0 }' /proc/net/sockstat; }

# ----------------------------------------------------------------------------- backend
ECHO_PID=""
start_echo() {
    "${CL[@]}" "$LOADTOOL" echo --listen "$BE_LISTEN" --deadline 3600 </dev/null \
        >"$OUT_DIR/logs/echo.out" 2>"$OUT_DIR/logs/echo.err" &
    ECHO_PID=$!; track "$ECHO_PID" "echo backend"
    wait_listen "$ECHO_PID" 10 "${BE_PORTS[@]}" && echo_ok "${BE_PORTS[0]}" || die "echo backend did not start (logs/echo.*)"
}

# ----------------------------------------------------------------------------- proxy configs
ringlb_conf() { # file port max_connections
    local s
    {
        echo "[runtime]"
        echo "workers = $WORKERS"
        echo "pin_cores = false   # taskset pins the process"
        echo "shutdown_timeout = \"1s\""
        echo
        echo "[[listener]]"
        echo "name = \"c100k\""
        echo "mode = \"tcp\""
        echo "listen = \"127.0.0.1:$2\""
        echo "upstream = \"echo\""
        echo "max_connections = $3"
        echo "connect_timeout = \"1s\""
        echo "idle_timeout = \"30m\""
        echo
        echo "[upstream.echo]"
        echo "balance = \"round_robin\""
        s=$(printf '{ addr = "127.0.0.1:%s" }, ' "${BE_PORTS[@]}")
        echo "servers = [${s%, }]"
    } >"$1"
}
nginx_conf() { # file prefix
    local p
    {
        [[ -z $NGINX_STREAM_LOAD ]] || echo "$NGINX_STREAM_LOAD"
        echo "worker_processes $WORKERS;"
        echo "daemon off;"
        echo "master_process on;"
        echo "pid $2/nginx.pid;"
        echo "error_log $OUT_DIR/logs/nginx.error.log crit;"
        echo "worker_rlimit_nofile $NOFILE;"
        echo "events { worker_connections $NGINX_WC; }"
        echo "stream {"
        echo "    # stream has no access log unless configured: logging is off"
        printf '    upstream echo {'; for p in "${BE_PORTS[@]}"; do printf ' server 127.0.0.1:%s;' "$p"; done; echo ' }'
        echo "    server { listen 127.0.0.1:${PPORT[nginx]}; proxy_pass echo; proxy_connect_timeout 1s; proxy_timeout 30m; }"
        echo "}"
    } >"$1"
}
haproxy_conf() { # file
    local i
    {
        echo "global"
        echo "    nbthread $WORKERS"
        echo "    maxconn $HAPROXY_MAXCONN   # (fd limit $NOFILE - 100) / 2"
        echo "    # no 'log' lines: logging off"
        echo "defaults"
        echo "    mode tcp"
        echo "    maxconn $HAPROXY_MAXCONN"
        echo "    timeout connect 1s"
        echo "    timeout client 30m"
        echo "    timeout server 30m"
        echo "frontend fe"
        echo "    bind 127.0.0.1:${PPORT[haproxy]}"
        echo "    default_backend be"
        echo "backend be"
        echo "    balance roundrobin"
        for ((i = 0; i < ${#BE_PORTS[@]}; i++)); do echo "    server s$((i + 1)) 127.0.0.1:${BE_PORTS[$i]}"; done
    } >"$1"
}

declare -A PROXY_PID=()
start_proxy() { # target -> PROXY_PID[target]; 1 on failure
    local t=$1 conf pid port=${PPORT[$1]}
    case $t in
        ringlb)
            conf="$OUT_DIR/conf/ringlb.toml"
            ringlb_conf "$conf" "$port" "$N"
            "$RINGLB" check -c "$conf" >>"$OUT_DIR/logs/ringlb.log" 2>&1 || { log "ringlb: config rejected (logs/ringlb.log)"; return 1; }
            NO_COLOR=1 RINGLB_LOG=info "${PX[@]}" "$RINGLB" run -c "$conf" </dev/null >>"$OUT_DIR/logs/ringlb.log" 2>&1 &
            pid=$!;;
        nginx)
            mkdir -p "$TMP/nginx"
            conf="$OUT_DIR/conf/nginx-stream.conf"
            nginx_conf "$conf" "$TMP/nginx"
            "${PX[@]}" nginx -p "$TMP/nginx" -c "$conf" -e "$OUT_DIR/logs/nginx.error.log" </dev/null \
                >>"$OUT_DIR/logs/nginx.out" 2>&1 &
            pid=$!;;
        haproxy)
            conf="$OUT_DIR/conf/haproxy.cfg"
            haproxy_conf "$conf"
            haproxy -c -q -f "$conf" >>"$OUT_DIR/logs/haproxy.log" 2>&1 || { log "haproxy: config check failed (logs/haproxy.log)"; return 1; }
            "${PX[@]}" haproxy -db -f "$conf" </dev/null >>"$OUT_DIR/logs/haproxy.log" 2>&1 &
            pid=$!;;
    esac
    track "$pid" "$t"; PROXY_PID[$t]=$pid
    wait_listen "$pid" 15 "$port" || { log "$t: not listening on $port within 15s (logs/)"; return 1; }
    sleep 0.3   # nginx workers, haproxy threads
    echo_ok "$port" || { log "$t: no echo through 127.0.0.1:$port"; return 1; }
    return 0
}
stop_proxy() { local t=$1; [[ -z ${PROXY_PID[$t]:-} ]] || stop_pid "${PROXY_PID[$t]}"; unset "PROXY_PID[$t]"; }
proxy_pids() { # target: the process and its children (nginx workers)
    local p=${PROXY_PID[$1]:-}
    [[ -n $p ]] || return 0
    echo "$p"; children_of "$p"
}

# what stops each proxy, from its config (the hold test finds out for real)
proxy_cap() { # target
    case $1 in
        ringlb) { grep -oE 'max_connections [0-9]+\)' "$OUT_DIR/logs/ringlb.log" || true; } | tail -n 1 | tr -d ')' | awk '{ print $2 }';;
        nginx)  echo $((WORKERS * (NOFILE - 16) / 2));;
        haproxy) echo "$HAPROXY_MAXCONN";;
    esac
}
cap_note() { # target cap
    case $1 in
        ringlb)
            local w
            w=$(grep -o 'RLIMIT_NOFILE is [0-9]* (hard limit [0-9]*) but max_connections totalling [0-9]* need [0-9]* fds (2 per connection + [0-9]* fixed); capping to [0-9]*' \
                "$OUT_DIR/logs/ringlb.log" | tail -n 1 || true)
            if [[ -n $w ]]; then
                echo "ringlb max_connections $N capped to $2 by its fd budget (RLIMIT_NOFILE $(awk '{print $3}' <<<"$w"), 2 fds per connection + $(sed 's/.*+ \([0-9]*\) fixed.*/\1/' <<<"$w") fixed)"
            else
                echo "ringlb max_connections $2"
            fi;;
        nginx) echo "nginx worker fd limit (worker_rlimit_nofile $NOFILE, 2 fds per connection, worker_connections $NGINX_WC)";;
        haproxy) echo "haproxy maxconn $2 (sized to the $NOFILE-fd limit: (limit - 100) / 2)";;
    esac
}

# ----------------------------------------------------------------------------- hold test
run_hold() { # target
    local t=$1 port=${PPORT[$1]} cap expected pct cps=() c line label open pids out err ctl hp k
    local rss fds procs befds ltfds inuse mem fin rc reached stop ff limit pfd pnofile be_err extra
    log "hold: $t"
    wait_lock
    if ! start_proxy "$t"; then res "$t" failed start; stop_proxy "$t"; return 0; fi
    cap=$(proxy_cap "$t"); cap=${cap:-$N}
    expected=$N
    ((cap < expected)) && expected=$cap
    ((LT_BUDGET < expected)) && expected=$LT_BUDGET
    ((BE_BUDGET < expected)) && expected=$BE_BUDGET
    declare -A PCT_OF=()
    for pct in "${CP_LIST[@]}"; do
        ((pct < 100)) || continue
        c=$((expected * pct / 100))
        cps+=("$c"); PCT_OF[$c]=$pct
    done
    res "$t" requested "$N"; res "$t" cap "$cap"; res "$t" expected "$expected"
    [[ $t == ringlb ]] && res ringlb start_log "$(grep -E 'capping to|listening on' "$OUT_DIR/logs/ringlb.log" | sed 's/\x1b\[[0-9;]*m//g' | tr '\n' ' ' | tr -s ' ')"
    log "  $t: trying $N connections; limits here allow about $expected (proxy cap $cap, load tool $LT_BUDGET, backend $BE_BUDGET)"
    out="$OUT_DIR/out/hold-$t.txt"; err="$OUT_DIR/out/hold-$t.err"; ctl="$TMP/ctl-$t"; : >"$ctl"
    "${CL[@]}" "$LOADTOOL" hold --target "127.0.0.1:$port" --count "$N" --sources "$SRC_LIST" \
        --checkpoints "$(IFS=,; echo "${cps[*]}")" --concurrency "$HOLD_CONC" --echo-timeout-ms "$HOLD_ECHO_TIMEOUT_MS" \
        --connect-timeout-ms 3000 --sample "$SAMPLE" --open-timeout "$HOLD_OPEN_TIMEOUT" --close "$CLOSE" \
        --ctl "$ctl" --ctl-timeout 120 --deadline $((HOLD_OPEN_TIMEOUT + 600)) </dev/null >"$out" 2>"$err" &
    hp=$!; track "$hp" loadtool
    k=0
    while :; do
        k=$((k + 1))
        line=$(wait_line "$out" '^checkpoint ' "$k" "$hp" $((HOLD_OPEN_TIMEOUT + 60))) || { log "  $t: load tool ended or hung before checkpoint $k (out/hold-$t.*)"; break; }
        label=$(kv "$line" label); open=$(kv "$line" open)
        sleep 0.5   # let the proxy settle
        mapfile -t pids < <(proxy_pids "$t")
        rss=$(rss_kb "${pids[@]}"); fds=$(fd_count "${pids[@]}"); procs=${#pids[@]}
        befds=$(fd_count "$ECHO_PID"); ltfds=$(fd_count "$hp")
        read -r inuse mem < <(tcp_sockstat)
        if [[ $label == final ]]; then pct=100; else pct=${PCT_OF[$label]:-?}; fi
        echo "$t,$label,$pct,$open,$rss,$fds,$procs,$befds,$ltfds,$inuse,$mem" >>"$HOLD_CSV"
        log "  $t @${pct}%: open $open, RSS $rss KiB, fds $fds (backend fds $befds)"
        if [[ $label == final ]]; then
            pfd=$fds; pnofile=$(nofile_of "${pids[-1]}")
        fi
        echo "go $label" >>"$ctl"
        [[ $label == final ]] && break
    done
    rc=$(wait_exit "$hp" 60)
    fin=$(grep -m1 '^final ' "$out" || true)
    if [[ -z $fin ]]; then
        log "  $t: hold FAILED (rc=$rc, out/hold-$t.*)"; res "$t" failed hold; stop_proxy "$t"; return 0
    fi
    reached=$(kv "$fin" open); stop=$(kv "$fin" stop); ff=$(kv "$fin" first_failure)
    for k in open stop first_failure failures attempts held_bad held_bad_total sample sample_ok sample_fail open_secs rate_per_s; do
        res "$t" "$k" "$(kv "$fin" "$k")"
    done
    res "$t" proxy_fds_final "${pfd:-}"; res "$t" proxy_nofile "${pnofile:-}"
    be_err=$(grep -c 'accept error' "$OUT_DIR/logs/echo.err" || true)
    # which limit stopped it
    extra=""
    case $t in
        nginx) extra=$(grep -oE 'Too many open files|worker_connections are not enough' "$OUT_DIR/logs/nginx.error.log" 2>/dev/null | sort | uniq -c | awk '{ c = $1; $1 = ""; printf "%s%s x%d", (n++ ? "; " : ""), substr($0, 2), c }' || true);;
        haproxy) extra=$(grep -ciE 'maxconn|fd limit' "$OUT_DIR/logs/haproxy.log" 2>/dev/null | awk '$1 > 0 { print "haproxy log: " $1 " lines about maxconn/fd limit" }' || true);;
        ringlb) extra=$(grep -iE 'EMFILE|too many open files' "$OUT_DIR/logs/ringlb.log" | head -n 1 || true);;
    esac
    if [[ $stop == count_reached ]]; then
        limit="none: all $N held"
    elif [[ $ff == emfile* || $ff == enfile* ]]; then
        limit="load tool fd limit (RLIMIT_NOFILE $NOFILE, 1 fd per client socket)"
    elif [[ $ff == addr_not_avail* ]]; then
        limit="ephemeral ports ($SOURCES source addresses x $EPHEMERAL ports)"
    elif ((be_err > 0)); then
        limit="echo backend fd limit (accept errors in logs/echo.err)"
    elif ((reached + 1 >= cap)); then
        limit=$(cap_note "$t" "$cap")
    elif [[ -n ${pnofile:-} && -n ${pfd:-} ]] && ((pfd + 16 >= pnofile)); then
        limit="$t fd limit: $pfd of $pnofile fds open (2 per connection)"
    elif [[ $stop == open_timeout ]]; then
        limit="time: HOLD_OPEN_TIMEOUT=${HOLD_OPEN_TIMEOUT}s"
    else
        limit="UNEXPLAINED: stopped at first failure $ff (below the expected $expected)"
    fi
    [[ -n $extra ]] && res "$t" proxy_log "$extra"
    res "$t" limit "$limit"
    log "  $t: reached $reached of $N: limited by $limit; first failure $ff; failures $(kv "$fin" failures); held broken $(kv "$fin" held_bad_total); sample $(kv "$fin" sample_ok)/$(kv "$fin" sample) echoed"
    [[ -n $extra ]] && log "  $t log: $extra"
    stop_proxy "$t"
    sleep "$PAUSE"
}

# ----------------------------------------------------------------------------- rate test
rate_port() { if [[ $1 == direct ]]; then echo "${BE_PORTS[0]}"; else echo "${PPORT[$1]}"; fi; }
busy_pct() { # machine busy % over ~1 s (all CPUs)
    local a0 t0 a1 t1
    read -r a0 t0 < <(awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print $2+$3+$4+$7+$8+$9, t }' /proc/stat)
    sleep 1
    read -r a1 t1 < <(awk '$1 == "cpu" { t = 0; for (i = 2; i <= 9; i++) t += $i; print $2+$3+$4+$7+$8+$9, t }' /proc/stat)
    awk -v a=$((a1 - a0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.1f", (t > 0) ? 100 * a / t : 0 }'
}
wait_idle() { # -> busy % once under IDLE_MAX (or after IDLE_WAIT s)
    local b w=0
    b=$(busy_pct)
    while awk -v b="$b" -v m="$IDLE_MAX" 'BEGIN { exit !(b > m) }' && ((w < IDLE_WAIT)); do
        ((w % 10 == 0)) && log "  machine ${b}% busy (other load?): waiting (up to ${IDLE_WAIT}s)"
        sleep 1; w=$((w + 2)); b=$(busy_pct)
    done
    echo "$b"
}
times_children_s() { awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); n += a[1] * 60 + a[2] } printf "%.3f", n }' "$1"; }
run_rate() { # round target
    local r=$1 t=$2 port out pids=() p0 p1 e0 e1 m0 m1 a0 a1 b0 b1 line tw pre try calc disturbed
    port=$(rate_port "$t")
    [[ $t == direct ]] || mapfile -t pids < <(proxy_pids "$t")
    for ((try = 1; try <= RATE_RETRIES + 1; try++)); do
        "${CL[@]}" "$LOADTOOL" rate --target "127.0.0.1:$port" --duration "$RATE_WARMUP" --concurrency "$RATE_CONC" \
            --sources "$SRC_LIST" --close "$CLOSE" --deadline $((RATE_WARMUP + 30)) </dev/null >/dev/null 2>&1 || true
        pre=$(wait_idle)
        tw=$(ss -tanH state time-wait 2>/dev/null | wc -l || true)
        out="$OUT_DIR/out/rate-r$r-$t-try$try.txt"
        times >"$TMP/times0"
        p0=$(proc_ticks "${pids[@]}"); e0=$(proc_ticks "$ECHO_PID"); read -r m0 a0 b0 < <(machine_ticks)
        "${CL[@]}" "$LOADTOOL" rate --target "127.0.0.1:$port" --duration "$RATE_DURATION" --concurrency "$RATE_CONC" \
            --sources "$SRC_LIST" --close "$CLOSE" --deadline $((RATE_DURATION + 60)) </dev/null >"$out" 2>&1 || true
        p1=$(proc_ticks "${pids[@]}"); e1=$(proc_ticks "$ECHO_PID"); read -r m1 a1 b1 < <(machine_ticks)
        times >"$TMP/times1"
        line=$(grep -m1 '^rate ' "$out" || true)
        if [[ -z $line ]]; then log "  rate $t round $r FAILED (out/$(basename "$out"))"; res "$t" rate_failed "$r"; return 0; fi
        # CPU seconds: proxy, backend, client, machine; "other" = machine - those (kernel work the
        # processes' own figures miss, plus any outside load: a large share = a disturbed measurement)
        calc=$(awk -v h="$CLK_TCK" -v p=$((p1 - p0)) -v e=$((e1 - e0)) -v m=$((m1 - m0)) -v secs="$(kv "$line" secs)" \
            -v u0=$((a1 - a0)) -v u1=$((b1 - b0)) \
            -v c0="$(times_children_s "$TMP/times0")" -v c1="$(times_children_s "$TMP/times1")" -v lim="$RATE_OTHER_MAX" '
            BEGIN { px = p / h; be = e / h; mc = m / h; cl = c1 - c0; o = mc - px - be - cl
                    printf "%.3f,%.3f,%.3f,%.3f,%.2f,%.2f,%.3f,%d", px, be, cl, mc, u0 / h / secs, u1 / h / secs, o / secs, (o / secs > lim) }')
        disturbed=${calc##*,}
        echo "$r,$t,$try,$(kv "$line" secs),$(kv "$line" ok),$(kv "$line" cps),$(kv "$line" errors),$(kv "$line" err | tr ',' ';'),$(kv "$line" p50_us),$(kv "$line" p99_us),$calc,$pre,$tw" >>"$RATE_CSV"
        log "  round $r $t: $(kv "$line" cps) conn/s, errors $(kv "$line" errors), p99 $(kv "$line" p99_us) us; CPU0 $(cut -d, -f5 <<<"$calc") CPU1 $(cut -d, -f6 <<<"$calc") busy; other CPU $(cut -d, -f7 <<<"$calc") s/s$([[ $disturbed == 1 ]] && echo " > $RATE_OTHER_MAX: DISTURBED")"
        [[ $disturbed == 1 ]] || return 0
    done
    log "  round $r $t: still disturbed after $RATE_RETRIES retries: kept, flagged"
}

# ----------------------------------------------------------------------------- overload check
run_overload() {
    local conf="$OUT_DIR/conf/ringlb-overload.toml" pid out ctl lt line rc q fds res_line
    log "overload: ringlb max_connections $OVERLOAD_MAX, $OVERLOAD_CLIENTS clients"
    wait_lock
    ringlb_conf "$conf" "$P_OVERLOAD" "$OVERLOAD_MAX"
    NO_COLOR=1 RINGLB_LOG=info "${PX[@]}" "$RINGLB" run -c "$conf" </dev/null >>"$OUT_DIR/logs/ringlb-overload.log" 2>&1 &
    pid=$!; track "$pid" ringlb-overload
    if ! wait_listen "$pid" 15 "$P_OVERLOAD"; then log "  ringlb (overload) did not start"; res overload failed start; stop_pid "$pid"; return 0; fi
    out="$OUT_DIR/out/overload.txt"; ctl="$TMP/ctl-overload"; : >"$ctl"
    "${CL[@]}" "$LOADTOOL" overload --target "127.0.0.1:$P_OVERLOAD" --clients "$OVERLOAD_CLIENTS" \
        --max-connections "$OVERLOAD_MAX" --watch-pid "$pid" --fd-csv "$OUT_DIR/overload-fds.csv" --sources "$SRC_LIST" \
        --settle-ms 2000 --ctl "$ctl" --ctl-timeout 60 --deadline 180 </dev/null >"$out" 2>"$out.err" &
    lt=$!; track "$lt" loadtool
    if line=$(wait_line "$out" '^overload phase=full' 1 "$lt" 60); then
        q=$(ss -ltnH "sport = :$P_OVERLOAD" | awk '{ s += $2 } END { print s + 0 }')
        fds=$(fd_count "$pid")
        res overload listen_queue_at_full "$q"; res overload fds_at_full "$fds"
        log "  full: served $(kv "$line" served), waiting $(kv "$line" waiting); listen queue (ss Recv-Q) $q; ringlb fds $fds"
        echo "go full" >>"$ctl"
    fi
    rc=$(wait_exit "$lt" 60)
    res_line=$(grep -m1 '^overload result' "$out" || true)
    stop_pid "$pid"
    if [[ -z $res_line ]]; then log "  overload FAILED (rc=$rc, out/overload.txt*)"; res overload failed run; return 0; fi
    for k in ok clients max_connections served_full waiting_full released served_after_release expected_after_release \
        max_wait_after_release_ms dropped connect_fail failures failed_first verify_asked verify_ok verify_fail \
        base_fds fds_max fds_max_fill fds_max_full fds_max_release fds_max_verify fds_after_close samples; do
        res overload "$k" "$(kv "$res_line" "$k")"
    done
    res overload pipe_fd_allowance $((2 * 64 * WORKERS))
    res overload warnings "$(grep -ciE ' WARN|ERROR' "$OUT_DIR/logs/ringlb-overload.log" || true)"
    log "  result: $(cut -d' ' -f3- <<<"$res_line")"
}

# ----------------------------------------------------------------------------- setup record
write_setup() {
    local src="" commit="" dirty=""
    if [[ -n ${RINGLB_VERSION:-} ]]; then
        # the git work tree the binary sits in (RINGLB= another tree's binary), else this repo;
        # dirty = changes or untracked files outside perf/runs/ (run output)
        src=$(git -C "$(dirname "$RINGLB")" rev-parse --show-toplevel 2>/dev/null) || src=$REPO_ROOT
        commit=$(git -C "$src" rev-parse HEAD 2>/dev/null) || commit="no-commit"
        if git -C "$src" status --porcelain -- . ':(exclude)perf/runs' 2>/dev/null | grep -q .; then dirty=" (dirty)"; fi
    fi
    {
        echo "# Setup (c100k)"
        echo
        echo "- date: $(date -Is)"
        echo "- host: $(hostname)"
        echo "- kernel: $(uname -srvm)"
        echo "- CPU: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) cores online"
        echo "- memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
        has_t nginx && echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
        has_t haproxy && echo "- haproxy: $(haproxy -v 2>&1 | head -1)"
        if [[ -n ${RINGLB_VERSION:-} ]]; then
            echo "- ringlb: $RINGLB_VERSION ($RINGLB, built $(date -r "$RINGLB" -Is)), repo $src @ $commit$dirty (the binary may predate the repo state: the script does not build it)"
        fi
        echo "- loadtool: $LOADTOOL (perf/loadtool, tokio current_thread), $(rustc --version 2>/dev/null || echo 'rustc ?')"
        echo "- RLIMIT_NOFILE: $NOFILE soft = hard per process ($RAISE_NOTE); fs.nr_open $(cat /proc/sys/fs/nr_open), fs.file-max $(cat /proc/sys/fs/file-max)"
        echo "- ip_local_port_range: $PORT_RANGE ($EPHEMERAL ports), somaxconn $(cat /proc/sys/net/core/somaxconn), tcp_max_syn_backlog $(cat /proc/sys/net/ipv4/tcp_max_syn_backlog), tcp_tw_reuse $(cat /proc/sys/net/ipv4/tcp_tw_reuse), tcp_max_tw_buckets $(cat /proc/sys/net/ipv4/tcp_max_tw_buckets)"
        echo
        echo "## Command line"
        echo
        echo '```'
        echo "N=$N WORKERS=$WORKERS TARGETS=\"$TARGETS\" PARTS=\"$PARTS\" RATE_DURATION=$RATE_DURATION RATE_ROUNDS=$RATE_ROUNDS RATE_CONC=$RATE_CONC \\"
        echo "  RATE_WARMUP=$RATE_WARMUP RATE_RETRIES=$RATE_RETRIES RATE_OTHER_MAX=$RATE_OTHER_MAX IDLE_MAX=$IDLE_MAX IDLE_WAIT=$IDLE_WAIT \\"
        echo "  CLOSE=$CLOSE OVERLOAD_MAX=$OVERLOAD_MAX OVERLOAD_CLIENTS=$OVERLOAD_CLIENTS CHECKPOINTS=\"$CHECKPOINTS\" SOURCES=$SOURCES \\"
        echo "  BACKEND_PORTS=$BACKEND_PORTS HOLD_CONC=$HOLD_CONC HOLD_ECHO_TIMEOUT_MS=$HOLD_ECHO_TIMEOUT_MS SAMPLE=$SAMPLE PORT_BASE=$PORT_BASE \\"
        echo "  $0 $*"
        echo '```'
        echo
        echo "## Method"
        echo
        if ((WORKERS == 1)); then
            echo "- 1 worker per proxy (ringlb workers = 1, nginx worker_processes 1, HAProxy nbthread 1), proxy pinned to CPU 0 (\`taskset -c 0\`); load tool and echo backend pinned to CPU 1. Logging off (ringlb at info: start-up lines only)."
        else
            echo "- $WORKERS workers per proxy, nothing pinned."
        fi
        echo "- Echo backend: \`loadtool echo\` on ${#BE_PORTS[@]} ports (${BE_PORTS[*]}), its own process and fd budget; every proxy balances round robin over them (so the proxy -> backend side has ${#BE_PORTS[@]} destinations x $EPHEMERAL ephemeral ports)."
        echo "- Clients bind source addresses $SRC_LIST round robin (IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect), so client ports do not run out."
        echo "- Proxy limits: ringlb max_connections = N ($N), capped by ringlb to its fd budget; nginx worker_rlimit_nofile $NOFILE, worker_connections $NGINX_WC; HAProxy maxconn $HAPROXY_MAXCONN (global and defaults), no splice. Timeouts: connect 1s, idle 30m everywhere."
        echo "- Hold: \`loadtool hold\` opens connections ($HOLD_CONC attempts in flight), each sends 16 bytes and reads the echo right after connecting (idle after traffic). It stops at N or at the first connection that fails (no echo within ${HOLD_ECHO_TIMEOUT_MS} ms = waiting in a full accept queue; EOF/RST = dropped by the proxy; EMFILE = the load tool's own limit). Checkpoints at ${CHECKPOINTS// /, }% of what the limits allow (100% = where it stopped): the proxy's VmRSS (summed over nginx master + workers) and /proc/PID/fd count are read 0.5 s after the load tool pauses. RSS and fds per connection = least-squares slope over the checkpoints. At 100%, with all connections held, every held connection is checked for EOF/RST (MSG_PEEK) and $SAMPLE random ones echo a new message. Clients close with $CLOSE at the end."
        echo "- Rate: all proxies running at once (idle ones cost nothing), rounds in rotated order; per measurement ${RATE_WARMUP}s unrecorded warm-up, then ${RATE_DURATION}s of \`loadtool rate\` with $RATE_CONC concurrent loops of connect, send 64 bytes, read the 64-byte echo, close ($CLOSE: $([[ $CLOSE == rst ]] && echo 'SO_LINGER 0, the client leaves no TIME_WAIT' || echo 'normal close')). Before each measurement the machine must be under ${IDLE_MAX}% busy (waits up to ${IDLE_WAIT}s). CPU over the measurement: proxy and echo backend from /proc/PID/stat, the load tool from the shell's children times, machine and per-CPU from /proc/stat; *other* = machine - proxy - backend - client, per second: above ${RATE_OTHER_MAX} the measurement counts as disturbed (other load) and is re-done, up to ${RATE_RETRIES} times (rate.csv keeps every try; the summary uses the last). direct = client straight to the first backend port."
        echo "- Overload: a second ringlb with max_connections $OVERLOAD_MAX; $OVERLOAD_CLIENTS clients connect at once and send; after 2 s the first $((OVERLOAD_CLIENTS - OVERLOAD_MAX)) served ones leave (FIN) and the waiting ones must be served; then each remaining one echoes once more. ringlb's /proc/PID/fd is sampled every 10 ms throughout (overload-fds.csv)."
    } >"$OUT_DIR/SETUP.md"
    echo "c100k, WORKERS=$WORKERS, N=$N; ${T_LIST[*]}${RINGLB_VERSION:+; $RINGLB_VERSION @ $commit$dirty}; host $(hostname), kernel $(uname -r). See SETUP.md." >"$OUT_DIR/meta.txt"
}

# ----------------------------------------------------------------------------- summary
summarize() {
    python3 - "$OUT_DIR" "$N" "$WORKERS" <<'PY'
import csv, os, statistics, sys
out, N, W = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def rows(name):
    p = os.path.join(out, name)
    return list(csv.DictReader(open(p))) if os.path.exists(p) else []
res = {}
for r in rows("results.csv"):
    res.setdefault(r["target"], {})[r["key"]] = r["value"]
def slope(pts):
    if len(pts) < 2: return None
    mx = sum(x for x, _ in pts) / len(pts); my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    return None if sxx == 0 else sum((x - mx) * (y - my) for x, y in pts) / sxx
hold = {}
for r in rows("hold.csv"):
    hold.setdefault(r["target"], []).append(r)
order = [t for t in ("ringlb", "nginx", "haproxy") if t in hold or t in res]
L = []
L.append(f"# C100K: ringlb vs nginx stream vs HAProxy mode tcp ({os.path.basename(out)})")
L.append("")
L.append(f"{W} worker(s) per proxy; N = {N} connections tried; see SETUP.md for versions, limits and method.")
L.append("")
L.append("## Concurrent idle connections")
L.append("")
L.append("| target | reached | of N | limit hit | RSS/conn KiB | fds/conn | RSS/conn vs ringlb | errors | sample echo | RSS at 0 → 100% (MiB) |")
L.append("|---|---|---|---|---|---|---|---|---|---|")
per = {}
for t in order:
    pts = [(int(r["open"]), int(r["rss_kb"]), int(r["fds"])) for r in hold.get(t, [])]
    rs = slope([(o, k) for o, k, _ in pts]); fs = slope([(o, f) for o, _, f in pts])
    per[t] = (rs, fs)
for t in order:
    d = res.get(t, {}); rs, fs = per[t]
    if "failed" in d:
        L.append(f"| {t} | FAILED ({d['failed']}) | {N} | | | | | | | |"); continue
    base = per.get("ringlb", (None, None))[0]
    ratio = f"×{rs / base:.2f}" if rs is not None and base else "–"
    held_bad = int(d.get("held_bad_total", "0") or 0)
    sample_fail = int(d.get("sample", "0") or 0) - int(d.get("sample_ok", "0") or 0)
    errs = held_bad + sample_fail + (1 if d.get("limit", "").startswith("UNEXPLAINED") else 0)
    pts = hold.get(t, [])
    rng = f"{int(pts[0]['rss_kb'])/1024:.1f} → {int(pts[-1]['rss_kb'])/1024:.1f}" if pts else "–"
    L.append(f"| {t} | {d.get('open', '?')} | {N} | {d.get('limit', '?')} | "
             f"{(rs / 1.0):.2f} | {fs:.3f} | {ratio} | {errs} | {d.get('sample_ok', '?')}/{d.get('sample', '?')} | {rng} |"
             if rs is not None and fs is not None else
             f"| {t} | {d.get('open', '?')} | {N} | {d.get('limit', '?')} | – | – | – | {errs} | – | {rng} |")
L.append("")
L.append("RSS/conn and fds/conn: least-squares slope of the proxy's VmRSS (KiB) and open fds over the checkpoints "
         "(hold.csv). User-space memory only: kernel socket buffers are not in RSS (hold.csv also has the machine's TCP "
         "socket count and TCP memory pages). errors = held connections found closed/reset + sample echoes that failed; "
         "the probes past the limit are not errors:")
L.append("")
for t in order:
    d = res.get(t, {})
    if "first_failure" in d:
        L.append(f"- {t}: stop `{d.get('stop')}`, first failure `{d.get('first_failure')}` (kind@open), failures past the limit "
                 f"`{d.get('failures')}` (echo_timeout = waited in the accept queue, not dropped; eof/reset = dropped by the proxy), "
                 f"proxy fds at 100% {d.get('proxy_fds_final')} of RLIMIT_NOFILE {d.get('proxy_nofile')}, opened in {d.get('open_secs')} s"
                 + (f"; log: {d['proxy_log']}" if d.get("proxy_log") else ""))
if res.get("ringlb", {}).get("start_log"):
    L.append(f"- ringlb start-up log: `{res['ringlb']['start_log'].strip()}`")
L.append("")
rate_all = rows("rate.csv")
# per round and target, the last try: undisturbed, or still disturbed after the retries (flagged)
last = {}
for r in rate_all:
    last[(r["round"], r["target"])] = r
rate = list(last.values())
if rate:
    by = {}
    for r in rate:
        by.setdefault(r["target"], []).append(r)
    med = {t: statistics.median(float(r["cps"]) for r in v) for t, v in by.items()}
    L.append("## Connection rate (short-lived: connect, 64 bytes, echo, close)")
    L.append("")
    L.append("| target | conn/s (median) | min–max | vs ringlb | vs direct | proxy CPU-s per 100k conns | proxy CPU ÷ backend CPU (median) | machine CPU-s per 100k conns | CPU0 / CPU1 busy | p99 ms (median) | errors |")
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in ["direct"] + order:
        if t not in by: continue
        v = by[t]; cps = [float(r["cps"]) for r in v]
        ok = sum(int(r["ok"]) for r in v)
        pc = sum(float(r["proxy_cpu_s"]) for r in v); mc = sum(float(r["machine_cpu_s"]) for r in v)
        errs = sum(int(r["errors"]) for r in v)
        kinds = sorted({r["err"] for r in v if r["err"] not in ("", "none")})
        vr = f"×{med[t] / med['ringlb']:.2f}" if "ringlb" in med and med["ringlb"] else "–"
        vd = f"×{med[t] / med['direct']:.2f}" if "direct" in med and med["direct"] else "–"
        pcs = "–" if t == "direct" else (f"{pc / ok * 1e5:.2f}" if ok else "–")
        dist = sum(1 for r in v if r["disturbed"] == "1")
        p99 = statistics.median(float(r["p99_us"]) for r in v) / 1000
        pb = "–" if t == "direct" else f"{statistics.median(float(r['proxy_cpu_s']) / float(r['backend_cpu_s']) for r in v if float(r['backend_cpu_s']) > 0):.2f}"
        busy = f"{statistics.median(float(r['cpu0_busy']) for r in v):.0%} / {statistics.median(float(r['cpu1_busy']) for r in v):.0%}"
        L.append(f"| {t} | {med[t]:,.0f}{f' ({dist} disturbed)' if dist else ''} | {min(cps):,.0f}–{max(cps):,.0f} | {vr} | {vd} | {pcs} | {pb} | "
                 f"{(mc / ok * 1e5) if ok else 0:.2f} | {busy} | {p99:.1f} | {errs}{(' (' + ' '.join(kinds) + ')') if kinds else ''} |")
    L.append("")
    c1 = [float(r["cpu1_busy"]) for r in rate if r["target"] != "direct"]
    c0 = [float(r["cpu0_busy"]) for r in rate if r["target"] != "direct"]
    if W == "1" and c1 and statistics.median(c1) >= 0.9:
        L.append(f"CPU 1 (load tool + echo backend) was {statistics.median(c1):.0%} busy and CPU 0 (the proxy) {statistics.median(c0):.0%} "
                 "(medians over the proxied measurements): the client side limits conn/s here as much as the proxy does, so "
                 "conn/s differences between proxies are small and noisy; proxy CPU per connection and proxy CPU ÷ backend CPU "
                 "(the same backend work for every target) show the proxy's own cost.")
        L.append("")
    redo = len(rate_all) - len(rate)
    L.append(f"{len(set(r['round'] for r in rate))} round(s), order rotated each round, each measurement after the machine was idle "
             f"(< IDLE_MAX % busy); {redo} measurement(s) re-done because CPU outside the proxy, backend and client was too high "
             f"(other load on the machine); rate.csv has every try.")
    L.append("")
ov = res.get("overload")
if ov:
    L.append("## Overload (ringlb, max_connections < clients)")
    L.append("")
    if "failed" in ov:
        L.append(f"FAILED ({ov['failed']})")
    else:
        M = int(ov.get("max_connections", 0)); base = int(ov.get("base_fds", 0)); mx = int(ov.get("fds_max", 0))
        allow = int(ov.get("pipe_fd_allowance", 0)); excess = mx - base - 2 * M
        checks = [
            (f"fds never above base + 2 x max_connections + pipe pool: max {mx} = base {base} + 2 x {M} + {excess} (allowed + {allow})", excess <= allow),
            (f"served while full: {ov.get('served_full')} of {ov.get('clients')} clients (= max_connections {M}); "
             f"{ov.get('waiting_full')} waiting, listen queue (ss Recv-Q) {ov.get('listen_queue_at_full', '?')}",
             ov.get("served_full") == str(min(M, int(ov.get('clients', 0))))),
            (f"accepted then dropped: {ov.get('dropped')} (clients closed/reset by the proxy); connect failures {ov.get('connect_fail')}; failures `{ov.get('failures')}`",
             ov.get("dropped") == "0" and ov.get("connect_fail") == "0"),
            (f"waiting clients served after {ov.get('released')} left: {ov.get('served_after_release')} of {ov.get('expected_after_release')}, "
             f"the last {ov.get('max_wait_after_release_ms')} ms after the release",
             ov.get("served_after_release") == ov.get("expected_after_release")),
            (f"every remaining client echoes again: {ov.get('verify_ok')} of {ov.get('verify_asked')}", ov.get("verify_ok") == ov.get("verify_asked")),
        ]
        L.append("| check | result |"); L.append("|---|---|")
        for text, ok in checks:
            L.append(f"| {text} | {'PASS' if ok else 'FAIL'} |")
        L.append("")
        L.append(f"fd maxima by phase: fill {ov.get('fds_max_fill')}, full {ov.get('fds_max_full')}, release {ov.get('fds_max_release')}, "
                 f"verify {ov.get('fds_max_verify')}{' (no 10 ms sample fell in that phase)' if ov.get('fds_max_verify') == 'none' else ''}; "
                 f"after close {ov.get('fds_after_close')} ({ov.get('samples')} samples, overload-fds.csv).")
    L.append("")
# goals
L.append("## Against the goals")
L.append("")
rl = res.get("ringlb", {})
if rl and "open" in rl:
    rs, fs = per.get("ringlb", (None, None))
    errs = int(rl.get("held_bad_total", "0") or 0) + int(rl.get("sample", "0") or 0) - int(rl.get("sample_ok", "0") or 0)
    L.append(f"- concurrent proxied connections: ringlb reached {rl['open']} ({rl.get('limit')}), errors {errs}: "
             f"{'met' if errs == 0 and not rl.get('limit', '').startswith('UNEXPLAINED') else 'NOT met'}")
    if fs is not None:
        L.append(f"- about 2 fds per idle connection: {fs:.3f}: {'met' if abs(fs - 2) <= 0.1 else 'NOT met'}")
    ng = per.get("nginx", (None, None))[0]
    if rs is not None and ng:
        L.append(f"- RSS per idle connection at most half of nginx stream's: ringlb {rs:.2f} KB vs nginx {ng:.2f} KB "
                 f"(ratio {rs / ng:.2f}): {'met' if rs <= ng / 2 else 'NOT met'}")
if rate and "ringlb" in med:
    others = [t for t in ("nginx", "haproxy") if t in med]
    if others:
        ahead = all(med["ringlb"] > med[t] for t in others)
        lo = lambda t: min(float(r["cps"]) for r in by[t]); hi = lambda t: max(float(r["cps"]) for r in by[t])
        overlap = [t for t in others if lo("ringlb") <= hi(t) and lo(t) <= hi("ringlb")]
        note = f" (medians; the min–max ranges overlap with {' and '.join(overlap)}: within run-to-run noise)" if overlap else ""
        L.append(f"- connection rate ahead of {' and '.join(others)}: ringlb {med['ringlb']:,.0f}/s vs "
                 + ", ".join(f"{t} {med[t]:,.0f}/s" for t in others) + f": {'met' if ahead else 'NOT met'}{note}")
        def cpu100k(t):
            v = by[t]; ok = sum(int(r["ok"]) for r in v)
            return sum(float(r["proxy_cpu_s"]) for r in v) / ok * 1e5 if ok else float("nan")
        cheaper = all(cpu100k("ringlb") < cpu100k(t) for t in others)
        L.append(f"- proxy CPU per connection (the proxy's own cost): ringlb {cpu100k('ringlb'):.2f} CPU-s per 100k vs "
                 + ", ".join(f"{t} {cpu100k(t):.2f}" for t in others) + f": {'lower than both' if cheaper else 'NOT lower than both'}")
open(os.path.join(out, "summary.md"), "w").write("\n".join(L) + "\n")
print("\n".join(L))
PY
}

# ----------------------------------------------------------------------------- main
for p in "${BE_PORTS[@]}" "${PPORT[@]}" "$P_OVERLOAD"; do listening "$p" && die "port $p is already in use (set PORT_BASE)"; done
write_setup "$@"
log "results: $OUT_DIR"
log "N=$N; targets: ${T_LIST[*]}; workers: $WORKERS; sources: $SRC_LIST; backends: ${BE_PORTS[*]}"
log "per-process fd limit $NOFILE: load tool can hold ~$LT_BUDGET, echo backend ~$BE_BUDGET, a proxy (2 fds each) ~$(((NOFILE - 100) / 2))"
wait_lock
start_echo

T0=$(date +%s)
if has_part hold; then for t in "${T_LIST[@]}"; do run_hold "$t"; done; fi

if has_part rate && ((RATE_ROUNDS > 0)); then
    log "rate: $RATE_ROUNDS round(s) of ${RATE_DURATION}s, $RATE_CONC concurrent, close=$CLOSE"
    wait_lock
    R_LIST=(direct)
    for t in "${T_LIST[@]}"; do
        if start_proxy "$t"; then R_LIST+=("$t"); else res "$t" rate_failed start; stop_proxy "$t"; fi
    done
    n=${#R_LIST[@]}
    for ((round = 1; round <= RATE_ROUNDS; round++)); do
        for ((i = 0; i < n; i++)); do run_rate "$round" "${R_LIST[$(((i + round - 1) % n))]}"; done
    done
    for t in "${T_LIST[@]}"; do stop_proxy "$t"; done
fi

if has_part overload && ((OVERLOAD_MAX > 0)); then run_overload; fi
stop_pid "$ECHO_PID"
log "took $(($(date +%s) - T0)) s; summary: $OUT_DIR/summary.md"
summarize
if grep -qE ',(failed|rate_failed),' "$RES_CSV" || grep -q '^overload,ok,0' "$RES_CSV"; then
    log "some measurements failed or a check did not pass (results.csv)"
    exit 2
fi
