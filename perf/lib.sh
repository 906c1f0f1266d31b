# shellcheck shell=bash
# perf/lib.sh — shared by perf/l4.sh and perf/l7.sh (sourced, not run on its own).
#
# Process tracking (every process started is recorded by PID in RUNNING and stopped by the EXIT
# trap, also on Ctrl-C), limits, the run directory, the backend nginx, CPU accounting
# (/proc/PID/stat, /proc/stat, the shell's children times), one recorded wrk run, the round loop
# and the setup record. Method: /work/shared/perf-method.md (see perf/README.md).
#
# The sourcing script sets SCRIPT_DIR, REPO_ROOT, SUMMARIZE and its default TARGETS (plus its own
# knobs) before sourcing, and defines the hooks the round loop calls:
#   start_proxy TARGET (sets PROXY_PID, returns 1 on failure), warm_up TARGET,
#   run_workloads TARGET, backend_pids SERVICE (the PIDs whose CPU is the backend's).

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ----------------------------------------------------------------------------- common knobs
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}            # wrk seconds
WARMUP=${WARMUP:-2}                 # wrk warm-up seconds (unrecorded)
IDLE_WAIT=${IDLE_WAIT:-30}          # max seconds to wait for the machine to be < 15% busy before a round
PIN=${PIN:-1}                       # 1: proxy on CPU 0, clients+backends on CPU 1, 1 worker; 0: unpinned, 2 workers
RINGLB_EXTRA=${RINGLB_EXTRA:-}      # extra TOML lines put in every ringlb [[listener]]
RINGLB_IO_URING=${RINGLB_IO_URING:-auto}
PORT_OFFSET=${PORT_OFFSET:-0}
PAUSE=${PAUSE:-1}                   # seconds between measurements
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 ]] || die "ROUNDS must be >= 1"

list_knob() { # VAR ARRAY: "a,b c" in $VAR -> VAR="a b c", ARRAY=(a b c)
    local -n _v=$1 _a=$2
    _v=${_v//,/ }
    read -ra _a <<<"$_v"
}
list_knob TARGETS T_LIST
has_t() { local t; for t in "${T_LIST[@]}"; do [[ $t == "$1" ]] && return 0; done; return 1; }

# ----------------------------------------------------------------------------- pinning
# PIN=1: proxy `taskset -c 0`, clients and backends `taskset -c 1`, 1 worker per proxy.
# PIN=0: no taskset, 2 workers per proxy.
# shellcheck disable=SC2034  # PX, CL, PWORKERS are used by the sourcing script
if [[ $PIN == 1 ]]; then
    PX=(taskset -c 0); CL=(taskset -c 1); PWORKERS=1
else
    PX=(); CL=(); PWORKERS=2
fi

# ----------------------------------------------------------------------------- install
apt_install() { # packages... (nothing to do when empty; apt-get update only then)
    (($#)) || return 0
    [[ $EUID -eq 0 ]] || die "missing packages: $* (run as root, or install them)"
    log "installing: $*"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ringlb binary: build it (release) from the repo root if the default path is missing; sets RINGLB_VERSION
RINGLB_DEFAULT="$REPO_ROOT/target/release/ringlb"
RINGLB=${RINGLB:-$RINGLB_DEFAULT}
ensure_ringlb() {
    if [[ ! -x $RINGLB ]]; then
        if [[ $RINGLB == "$RINGLB_DEFAULT" ]]; then
            log "ringlb not built: cargo build --release in $REPO_ROOT"
            (cd "$REPO_ROOT" && cargo build --release) || die "cargo build --release failed (run with TARGETS without ringlb to skip it)"
        else
            die "RINGLB=$RINGLB is not an executable"
        fi
    fi
    RINGLB_VERSION=$("$RINGLB" --version 2>&1) || die "'$RINGLB --version' failed: $RINGLB_VERSION"
    ringlb_source
}
# RINGLB_SRC: the git work tree the binary sits in (RINGLB=/other/tree/target/release/ringlb
# records that tree, not this script's), else REPO_ROOT; RINGLB_COMMIT: its full HEAD;
# RINGLB_DIRTY: " (dirty)" if it has changes or untracked files outside perf/runs/ (run output)
ringlb_source() {
    RINGLB_SRC=$(git -C "$(dirname "$RINGLB")" rev-parse --show-toplevel 2>/dev/null) || RINGLB_SRC=$REPO_ROOT
    RINGLB_COMMIT=$(git -C "$RINGLB_SRC" rev-parse HEAD 2>/dev/null) || RINGLB_COMMIT="no-commit"
    RINGLB_DIRTY=""
    if git -C "$RINGLB_SRC" status --porcelain -- . ':(exclude)perf/runs' 2>/dev/null | grep -q .; then RINGLB_DIRTY=" (dirty)"; fi
}
ringlb_meta() { # ", ringlb X.Y.Z @ <full commit>[ (dirty)]" for meta.txt, empty when ringlb is not run
    [[ -z ${RINGLB_VERSION:-} ]] || echo ", $RINGLB_VERSION @ $RINGLB_COMMIT$RINGLB_DIRTY"
}

# ----------------------------------------------------------------------------- run dir
init_out_dir() { # name-suffix -> OUT_DIR (runs/<date>-<host><suffix>[-N] unless set), RAW, TMP
    local base n
    if [[ -z ${OUT_DIR:-} ]]; then
        base="$SCRIPT_DIR/runs/$(date +%Y-%m-%d)-$(hostname)$1"
        OUT_DIR=$base; n=2
        while [[ -e $OUT_DIR ]]; do OUT_DIR="$base-$n"; n=$((n + 1)); done
    fi
    mkdir -p "$OUT_DIR/conf" "$OUT_DIR/logs" "$OUT_DIR/out"
    RAW="$OUT_DIR/raw.csv"
    [[ -s $RAW ]] || echo "round,target,workload,metric,value" >"$RAW"
    TMP=$(mktemp -d /tmp/ringlb-perf.XXXXXX)
}

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
    [[ -z ${TMP:-} ]] || rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ----------------------------------------------------------------------------- limits
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=65536
# same connection cap for every proxy (ringlb max_connections = 5000); fits ulimit -n
MAXCONN=5000
((NOFILE >= 2 * MAXCONN + 200)) || MAXCONN=$(((NOFILE - 200) / 2))

# ----------------------------------------------------------------------------- readiness
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
http_ok() { # port: GET / answers "hello"
    local r
    r=$(timeout 3 bash -c 'exec 3<>/dev/tcp/127.0.0.1/'"$1"'; printf "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" >&3; cat <&3' 2>/dev/null) || true
    [[ $r == *hello* ]]
}
check_ports_free() { local p; for p in "$@"; do listening "$p" && die "port $p is already in use (set PORT_OFFSET)"; done; return 0; }

# ----------------------------------------------------------------------------- nginx
nginx_head() { # prefix logname workers: main-context lines (foreground, pid under prefix, errors at crit)
    printf '%s\n' "worker_processes $3;" "daemon off;" "master_process on;" "pid $1/nginx.pid;" \
        "error_log $OUT_DIR/logs/$2.error.log crit;" "worker_rlimit_nofile $NOFILE;"
}
nginx_temp_paths() { # prefix: http-context temp paths under prefix/tmp (indented)
    local k
    mkdir -p "$1/tmp"
    for k in client_body proxy fastcgi uwsgi scgi; do echo "    ${k}_temp_path $1/tmp/${k#client_};"; done
}

BE_NGINX_PID=""
start_be_nginx() { # port1 port2 [extra http-block lines] [extra server-block lines]
    local p1=$1 p2=$2 pre="$TMP/be-nginx" conf="$OUT_DIR/conf/backend-nginx.conf"
    cat >"$conf" <<EOF
# backend: 1 worker, "hello" with keep-alive on two ports
$(nginx_head "$pre" backend-nginx 1)
events { worker_connections 16384; }
http {
    access_log off;
    default_type text/plain;
    keepalive_timeout 600s;
    keepalive_requests 100000000;
$(nginx_temp_paths "$pre")
${3:+$3
}    server {
        listen 127.0.0.1:$p1;
        listen 127.0.0.1:$p2;
        location / { return 200 "hello\n"; }
${4:+$4
}    }
}
EOF
    "${CL[@]}" nginx -p "$pre" -c "$conf" -e "$OUT_DIR/logs/backend-nginx.error.log" </dev/null \
        >>"$OUT_DIR/logs/backend-nginx.out" 2>&1 &
    BE_NGINX_PID=$!; RUNNING[$BE_NGINX_PID]="nginx backend"
    wait_listen "$BE_NGINX_PID" 10 "$p1" "$p2" && http_ok "$p1" && http_ok "$p2" \
        || die "backend nginx did not start (logs/backend-nginx.*)"
}

# ----------------------------------------------------------------------------- proxies
# Each starts the proxy under PX in the background and records it (PROXY_PID).
PROXY_PID=""
launch_ringlb() { # conf name; returns 1 if `ringlb check` rejects the config
    local conf=$1 name=$2 crc=0
    # `ringlb check` exits 2 with the offending key when the config is invalid
    "$RINGLB" check -c "$conf" >>"$OUT_DIR/logs/ringlb.log" 2>&1 || crc=$?
    ((crc != 2)) || { log "ringlb: config rejected: $(tail -n 1 "$OUT_DIR/logs/ringlb.log")"; return 1; }
    RUST_LOG=${RUST_LOG:-warn} "${PX[@]}" "$RINGLB" run -c "$conf" </dev/null >>"$OUT_DIR/logs/ringlb.log" 2>&1 &
    PROXY_PID=$!; RUNNING[$PROXY_PID]="$name"
}
launch_nginx() { # conf logname (prefix $TMP/px-nginx)
    "${PX[@]}" nginx -p "$TMP/px-nginx" -c "$1" -e "$OUT_DIR/logs/$2.error.log" </dev/null \
        >>"$OUT_DIR/logs/$2.out" 2>&1 &
    PROXY_PID=$!; RUNNING[$PROXY_PID]="nginx ${2#nginx-}"
}
launch_haproxy() { # conf name; returns 1 if `haproxy -c` rejects the config
    haproxy -c -q -f "$1" >>"$OUT_DIR/logs/$2.log" 2>&1 || { log "$2: config check failed"; return 1; }
    "${PX[@]}" haproxy -db -f "$1" </dev/null >>"$OUT_DIR/logs/$2.log" 2>&1 &
    PROXY_PID=$!; RUNNING[$PROXY_PID]="haproxy"
}
stop_proxy() { [[ -z $PROXY_PID ]] || stop_pid "$PROXY_PID"; PROXY_PID=""; }

# ----------------------------------------------------------------------------- CPU accounting
CLK_TCK=$(getconf CLK_TCK)
proc_ticks() { # pid... -> sum of utime+stime (all threads of each process)
    local p line t=0 fields
    for p in "$@"; do
        { read -r line <"/proc/$p/stat"; } 2>/dev/null || continue
        read -ra fields <<<"${line##*) }"
        t=$((t + fields[11] + fields[12]))
    done
    echo "$t"
}
machine_ticks() { # -> "busy_all busy_cpu0 busy_cpu1" (busy = total - idle - iowait)
    awk '$1 ~ /^cpu[01]?$/ { b = $2+$3+$4+$7+$8+$9; v[$1] = b }
         END { printf "%d %d %d\n", v["cpu"], v["cpu0"], v["cpu1"] }' /proc/stat
}
pids_with_children() { local p; for p in "$@"; do [[ -z $p ]] && continue; echo "$p"; children_of "$p"; done; }

ROUND=0; TARGET=""
emit() { echo "$ROUND,$TARGET,$1,$2,$3" >>"$RAW"; }  # workload metric value
note() { echo "$ROUND,$1,_$2,$3,$4" >>"$RAW"; }      # target what metric value

# m_begin SERVICE; run the client; m_snap right after it; then m_emit WORKLOAD UNITS KIND
M_PX=(); M_BE=()
m_begin() { # service
    mapfile -t M_PX < <(pids_with_children "$PROXY_PID")
    mapfile -t M_BE < <(backend_pids "$1")
    M_PX0=$(proc_ticks "${M_PX[@]}"); M_BE0=$(proc_ticks "${M_BE[@]}")
    read -r M_A0 M_C00 M_C10 < <(machine_ticks)
    times >"$TMP/times0"   # children's CPU (the client, once reaped); must not run in a subshell
    M_T0=$(date +%s.%N)
}
m_snap() { # readings at the end of the measured window
    M_T1=$(date +%s.%N)
    times >"$TMP/times1"
    M_PX1=$(proc_ticks "${M_PX[@]}"); M_BE1=$(proc_ticks "${M_BE[@]}")
    read -r M_A1 M_C01 M_C11 < <(machine_ticks)
}
times_children_s() { awk 'NR == 2 { n = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); sub("s", "", a[2]); n += a[1] * 60 + a[2] } printf "%.3f", n }' "$1"; }
m_emit() { # workload units kind(req|bytes)
    local wl=$1 units=$2 kind=$3 cl k v
    cl=$(awk -v a="$(times_children_s "$TMP/times0")" -v b="$(times_children_s "$TMP/times1")" 'BEGIN { printf "%.3f", b - a }')
    awk -v hz="$CLK_TCK" -v px=$((M_PX1 - M_PX0)) -v be=$((M_BE1 - M_BE0)) -v a=$((M_A1 - M_A0)) \
        -v c0=$((M_C01 - M_C00)) -v c1=$((M_C11 - M_C10)) -v units="$units" -v kind="$kind" -v cl="$cl" \
        -v wall="$(awk -v a="$M_T0" -v b="$M_T1" 'BEGIN{printf "%.3f", b-a}')" -v direct="$([[ $TARGET == direct ]] && echo 1 || echo 0)" '
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

# ----------------------------------------------------------------------------- wrk
wrk_measure() { # target workload url conns: one recorded `wrk -t1 --latency` run (backend service "http")
    local t=$1 wl=$2 url=$3 c=$4 out="$OUT_DIR/out/r${ROUND}-$1-$2.txt" rc=0 reqs errs
    m_begin http
    timeout $((DURATION + 30)) "${CL[@]}" wrk -t1 -c"$c" -d"${DURATION}s" --latency "$url" \
        </dev/null >"$out" 2>&1 || rc=$?
    m_snap
    python3 "$SUMMARIZE" parse-wrk "$out" >"$out.parsed"
    reqs=$(metric_of "$out.parsed" requests)
    if ((rc)) || [[ -z $reqs || $reqs == 0 ]]; then
        log "  $t $wl FAILED (rc=$rc, $out)"; note "$t" failed "$wl" 1; return 0
    fi
    m_emit "$wl" "$reqs" req
    while read -r k v; do emit "$wl" "$k" "$v"; done <"$out.parsed"
    errs=$(( $(metric_of "$out.parsed" socket_errors) + $(metric_of "$out.parsed" non2xx) ))
    log "  $t $wl: $(metric_of "$out.parsed" rps) req/s, p50 $(metric_of "$out.parsed" lat_p50_ms) ms, p99 $(metric_of "$out.parsed" lat_p99_ms) ms, errors $errs"
}
# one recorded h2load run: -c conns, -m H2_STREAMS streams each, DURATION seconds (plus
# H2LOAD_EXTRA: a body, headers); req/s,
# p50/p99 from its per-request log, errors, proxy CPU per 100k requests
H2LOAD_EXTRA=()
h2_measure() { # target workload url conns
    local t=$1 wl=$2 url=$3 c=$4 out="$OUT_DIR/out/r${ROUND}-$1-$2.txt" rc=0 reqs ok secs
    local lat="$TMP/h2load-lat.log"
    rm -f "$lat"
    m_begin http
    timeout $((DURATION + 30)) "${CL[@]}" h2load -t1 -c"$c" -m"$H2_STREAMS" -D"$DURATION" --log-file="$lat" \
        "${H2LOAD_EXTRA[@]}" "$url" \
        </dev/null >"$out" 2>&1 || rc=$?
    m_snap
    # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
    read -r reqs ok < <(awk '/^requests:/ { print $6, $8 }' "$out")
    secs=$(awk '/^finished in/ { sub("s,", "", $3); print $3 }' "$out")
    if ((rc)) || [[ -z $ok || $ok == 0 ]]; then
        log "  $t $wl FAILED (rc=$rc, $out)"; note "$t" failed "$wl" 1; return 0
    fi
    m_emit "$wl" "$ok" req
    emit "$wl" requests "$ok"
    emit "$wl" rps "$(awk -v n="$ok" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')"
    emit "$wl" non2xx "$(awk '/^status codes:/ { gsub(",", ""); print $5 + $7 + $9 }' "$out")"
    emit "$wl" socket_errors "$((reqs - ok))"
    # the log: start_time(us) status duration(us), one line per request
    read -r p50 p99 < <(awk '{ print $3 }' "$lat" | sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.3f %.3f\n", v[int(NR * 0.5) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000 }')
    emit "$wl" lat_p50_ms "$p50"; emit "$wl" lat_p99_ms "$p99"
    log "  $t $wl: $(awk -v n="$ok" -v s="$secs" 'BEGIN { printf "%.0f", n / s }') req/s, p50 $p50 ms, p99 $p99 ms, failed $((reqs - ok))"
}
wrk_warm() { # url conns seconds (unrecorded)
    timeout $(($3 + 20)) "${CL[@]}" wrk -t1 -c"$2" -d"$3s" "$1" </dev/null >/dev/null 2>&1 || true
}

# ----------------------------------------------------------------------------- rounds
machine_busy_pct() { # over ~1s
    local a0 t0 a1 t1
    read -r a0 t0 < <(awk '$1=="cpu"{t=0; for(i=2;i<=9;i++) t+=$i; print $2+$3+$4+$7+$8+$9, t}' /proc/stat)
    sleep 1
    read -r a1 t1 < <(awk '$1=="cpu"{t=0; for(i=2;i<=9;i++) t+=$i; print $2+$3+$4+$7+$8+$9, t}' /proc/stat)
    awk -v a=$((a1 - a0)) -v t=$((t1 - t0)) 'BEGIN { printf "%.1f", (t > 0) ? 100 * a / t : 0 }'
}
run_rounds() { # every target in turn per round (order rotated by one each round), via the hooks
    local n=${#T_LIST[@]} i busy waited tw order
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
            run_workloads "$TARGET"
            if [[ -n $PROXY_PID ]] && ! is_alive "$PROXY_PID"; then
                log "$TARGET died during the round"; note "$TARGET" failed died 1
            fi
            stop_proxy
            sleep "$PAUSE"
        done
    done
    ROUND=0; TARGET=""
}
finish() { # summary.md; exit 2 if anything failed
    log "summary: $OUT_DIR/summary.md"
    python3 "$SUMMARIZE" summarize "$OUT_DIR"
    if grep -q ',_failed,' "$RAW"; then
        log "some measurements failed: $(grep ',_failed,' "$RAW" | cut -d, -f1,2,4 | tr '\n' ' ')"
        exit 2
    fi
}

# ----------------------------------------------------------------------------- setup record
setup_host_lines() { # markdown list items: date, host, kernel, CPU, memory
    echo "- date: $(date -Is)"
    echo "- host: $(hostname)"
    echo "- kernel: $(uname -srvm)"
    echo "- CPU: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) cores online"
    echo "- memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
}
setup_ringlb_lines() { # ringlb version and repo state (when ringlb is a target)
    [[ -n ${RINGLB_VERSION:-} ]] || return 0
    echo "- ringlb: $RINGLB_VERSION ($RINGLB, built $(date -r "$RINGLB" -Is))"
    echo "- ringlb repo: $RINGLB_SRC @ $RINGLB_COMMIT$RINGLB_DIRTY (HEAD when the run started; the binary may predate it)"
}
setup_tail_head() { # the versions' end, limits and the "Command line" heading (opens the code block)
    setup_ringlb_lines
    setup_limits_line
    printf '\n## Command line\n\n```\n'
}
ringlb_runtime() { # the [runtime] table every perf ringlb config starts with
    printf '[runtime]\nworkers = %s\npin_cores = false   # taskset does the pinning\nio_uring = "%s"\n' "$PWORKERS" "$RINGLB_IO_URING"
}
setup_limits_line() {
    echo "- somaxconn: $(cat /proc/sys/net/core/somaxconn), ip_local_port_range: $(tr '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range), ulimit -n: $(ulimit -n)"
}
setup_pin_line() {
    if [[ $PIN == 1 ]]; then
        echo "- Pinned: proxy \`taskset -c 0\`; clients and backends \`taskset -c 1\`; 1 worker per proxy (nginx worker_processes 1, HAProxy nbthread 1, ringlb workers = 1, pin_cores = false)."
    else
        echo "- Unpinned: no taskset; 2 workers per proxy (nginx worker_processes 2, HAProxy nbthread 2, ringlb workers = 2, pin_cores = false)."
    fi
}
pin_summary() { [[ $PIN == 1 ]] && echo "proxy on CPU 0, clients+backends on CPU 1, 1 worker per proxy" || echo "unpinned, 2 workers per proxy"; }
