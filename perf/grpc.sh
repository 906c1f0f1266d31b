#!/usr/bin/env bash
# perf/grpc.sh — gRPC unary calls through ringlb (`protocol = "h2c"` upstream), nginx
# (`grpc_pass`, upstream keepalive) and HAProxy (`proto h2` on both sides), in one run, against the
# same backend: `perf/loadtool grpc`, an h2c gRPC echo server on two ports (round robin over
# both). Client: h2load -t1 -c{GRPC_CONNS} -m GRPC_STREAMS, each request one unary call with a
# GRPC_MSG-byte message (content-type application/grpc, te: trailers). Cleartext both sides.
# Method: /work/shared/perf-method.md (see perf/README.md); shared parts: perf/lib.sh.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
SUMMARIZE="$SCRIPT_DIR/summarize.py"

TARGETS=${TARGETS:-"ringlb nginx haproxy"}
GRPC_CONNS=${GRPC_CONNS:-"4 32"}
GRPC_STREAMS=${GRPC_STREAMS:-16}
GRPC_MSG=${GRPC_MSG:-100}          # bytes of message payload (echoed back)
KEEPALIVE=${KEEPALIVE:-64}          # nginx upstream keepalive (ringlb and HAProxy multiplex)
LOADTOOL_DIR="$SCRIPT_DIR/loadtool"
LOADTOOL=${LOADTOOL:-$LOADTOOL_DIR/target/release/loadtool}
source "$SCRIPT_DIR/lib.sh"
list_knob GRPC_CONNS G_LIST
H2_STREAMS=$GRPC_STREAMS

declare -A TIDX=([ringlb]=1 [nginx]=2 [haproxy]=3)
for t in "${T_LIST[@]}"; do [[ -n ${TIDX[$t]+x} ]] || die "unknown target '$t' (ringlb nginx haproxy)"; done
[[ $GRPC_MSG =~ ^[0-9]+$ ]] || die "GRPC_MSG must be a byte count"
B1=$((18280 + PORT_OFFSET)); B2=$((18281 + PORT_OFFSET))
port_of() { echo $((18290 + PORT_OFFSET + TIDX[$1])); }
URL_PATH=/bench.Echo/Unary

need=()
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
apt_install "${need[@]}"
command -v python3 >/dev/null 2>&1 || die "python3 is required"
if has_t ringlb; then ensure_ringlb; fi
if [[ $LOADTOOL == "$LOADTOOL_DIR/target/release/loadtool" ]]; then
    log "building perf/loadtool (cargo build --release, its own target dir)"
    (cd "$LOADTOOL_DIR" && cargo build --release -q) || die "cargo build of perf/loadtool failed"
fi

init_out_dir "-grpc$([[ $PIN == 1 ]] || echo -unpinned)"
echo l7 >"$OUT_DIR/kind"   # summarize.py: the L7 layout
ports=("$B1" "$B2"); for t in "${T_LIST[@]}"; do ports+=("$(port_of "$t")"); done
check_ports_free "${ports[@]}"
# one gRPC message: flag 0, a big-endian length, the payload
MSG_FILE="$OUT_DIR/conf/message.bin"
python3 -c "import sys, struct; n = int(sys.argv[1]); sys.stdout.buffer.write(b'\0' + struct.pack('>I', n) + b'x' * n)" "$GRPC_MSG" >"$MSG_FILE"
H2LOAD_EXTRA=(-d "$MSG_FILE" -H "content-type: application/grpc" -H "te: trailers")

BE_PID=""
backend_pids() { echo "$BE_PID"; }
start_backend() {
    "${CL[@]}" "$LOADTOOL" grpc --listen "127.0.0.1:$B1,127.0.0.1:$B2" </dev/null >>"$OUT_DIR/logs/backend-grpc.out" 2>&1 &
    BE_PID=$!; RUNNING[$BE_PID]="loadtool grpc"
    wait_listen "$BE_PID" 10 "$B1" "$B2" || die "the gRPC backend did not start (logs/backend-grpc.out)"
}
call_ok() { # port: one call answers with grpc-status 0
    local out
    out=$(timeout 5 nghttp -v -d "$MSG_FILE" -H "content-type: application/grpc" -H "te: trailers" \
        "http://127.0.0.1:$1$URL_PATH" 2>&1 | tr -d '\0') || true
    grep -q "grpc-status: 0" <<<"$out" || { log "port $1: no grpc-status 0 in the answer"; return 1; }
}

ringlb_conf() {
    local f="$OUT_DIR/conf/ringlb.toml"
    cat >"$f" <<EOF2
[runtime]
workers = $PWORKERS
pin_cores = false   # taskset does the pinning
io_uring = "$RINGLB_IO_URING"

[[listener]]
name = "grpc"
mode = "http"
listen = "127.0.0.1:$(port_of ringlb)"
upstream = "app"
max_connections = $MAXCONN
connect_timeout = "1s"
header_timeout = "60s"
keepalive_timeout = "10m"
response_timeout = "10m"
${RINGLB_EXTRA:+$RINGLB_EXTRA
}
[upstream.app]
protocol = "h2c"
balance = "round_robin"
keepalive_timeout = "10m"
servers = [{ addr = "127.0.0.1:$B1" }, { addr = "127.0.0.1:$B2" }]
EOF2
    echo "$f"
}
nginx_conf() {
    local f="$OUT_DIR/conf/nginx-grpc.conf" pre="$TMP/px-nginx"
    cat >"$f" <<EOF2
$(nginx_head "$pre" nginx-grpc "$PWORKERS")
events { worker_connections $((2 * MAXCONN + 100)); }
http {
    access_log off;
    keepalive_timeout 10m;
    keepalive_requests 100000000;
    client_header_timeout 60s;
$(nginx_temp_paths "$pre")
    upstream app {
        server 127.0.0.1:$B1;
        server 127.0.0.1:$B2;
        keepalive $KEEPALIVE;
        keepalive_timeout 10m;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$(port_of nginx) http2;
        http2_max_concurrent_streams 128;
        location / {
            grpc_pass grpc://app;
            grpc_connect_timeout 1s;
            grpc_read_timeout 10m;
            grpc_send_timeout 10m;
        }
    }
}
EOF2
    echo "$f"
}
haproxy_conf() {
    local f="$OUT_DIR/conf/haproxy.cfg"
    cat >"$f" <<EOF2
global
    nbthread $PWORKERS
    maxconn $MAXCONN
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 10m
    timeout server 10m
    timeout http-keep-alive 10m
    timeout http-request 60s
frontend fe_grpc
    bind 127.0.0.1:$(port_of haproxy) proto h2
    maxconn $MAXCONN
    default_backend be_grpc
backend be_grpc
    balance roundrobin
    server s1 127.0.0.1:$B1 proto h2
    server s2 127.0.0.1:$B2 proto h2
EOF2
    echo "$f"
}
start_proxy() {
    local t=$1
    PROXY_PID=""
    case $t in
        ringlb)  launch_ringlb "$(ringlb_conf)" ringlb || return 1;;
        nginx)   launch_nginx "$(nginx_conf)" nginx-grpc;;
        haproxy) launch_haproxy "$(haproxy_conf)" haproxy || return 1;;
    esac
    wait_listen "$PROXY_PID" 15 "$(port_of "$t")" || { log "$t: not listening within 15s (logs/)"; return 1; }
    call_ok "$(port_of "$t")" || { log "$t: a gRPC call through the proxy failed"; return 1; }
}
warm_up() {
    timeout $((WARMUP + 20)) "${CL[@]}" h2load -t1 -c"${G_LIST[0]}" -m"$GRPC_STREAMS" -D"$WARMUP" \
        "${H2LOAD_EXTRA[@]}" "http://127.0.0.1:$(port_of "$1")$URL_PATH" </dev/null >/dev/null 2>&1 || true
}
run_workloads() {
    local c
    for c in "${G_LIST[@]}"; do
        sleep "$PAUSE"
        h2_measure "$1" "grpc_unary_c${c}m$GRPC_STREAMS" "http://127.0.0.1:$(port_of "$1")$URL_PATH" "$c"
    done
}

write_setup() {
    {
        echo "# Setup (gRPC unary)"
        echo
        setup_host_lines
        echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
        echo "- haproxy: $(haproxy -v 2>&1 | head -1)"
        echo "- h2load: $(h2load --version 2>&1 | head -1)"
        setup_ringlb_lines
        setup_limits_line
        echo
        echo "## Command line"
        echo
        echo '```'
        echo "ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP TARGETS=\"$TARGETS\" GRPC_CONNS=\"$GRPC_CONNS\" GRPC_STREAMS=$GRPC_STREAMS GRPC_MSG=$GRPC_MSG KEEPALIVE=$KEEPALIVE PIN=$PIN \\"
        echo "  RINGLB=$RINGLB RINGLB_EXTRA='$RINGLB_EXTRA' $0 $*"
        echo '```'
        echo
        echo "## Method"
        echo
        setup_pin_line
        echo "- Backend: \`perf/loadtool grpc\` (the h2 crate on tokio, one thread) on ports $B1 and $B2: every call's message is echoed back, then trailers \`grpc-status: 0\`."
        echo "- Proxies, round robin over both ports, logging off, connect timeout 1s, idle 10m: ringlb http listener, upstream \`protocol = \"h2c\"\` (per-worker multiplexed connections, a backend picked per call); nginx \`listen ... http2\` + \`grpc_pass\` to an upstream with \`keepalive $KEEPALIVE\`; HAProxy \`bind ... proto h2\`, \`server ... proto h2\`, \`http-reuse always\`. Configs in conf/."
        echo "- Clients: h2load -t1 -c{$GRPC_CONNS} -m$GRPC_STREAMS -D${DURATION} -d message.bin (a ${GRPC_MSG}-byte gRPC message) -H 'content-type: application/grpc' -H 'te: trailers'; p50/p99 from h2load's per-request log. Before each target's round one call is checked with nghttp for \`grpc-status: 0\`."
        echo "- CPU as in perf/l7.sh: /proc/PID/stat of the proxy and of the backend before and after each measurement."
    } >"$OUT_DIR/SETUP.md"
    echo "gRPC unary, PIN=$PIN ($(pin_summary)); $(nginx -v 2>&1 | sed 's/^nginx version: //'), HAProxy $(haproxy -v 2>&1 | head -1 | awk '{print $3}')$(ringlb_meta); host $(hostname), kernel $(uname -r). See SETUP.md." >"$OUT_DIR/meta.txt"
}

write_setup "$@"
log "results: $OUT_DIR"
log "targets: ${T_LIST[*]}; connections: ${G_LIST[*]} x $GRPC_STREAMS streams; rounds: $ROUNDS; PIN=$PIN"
start_backend
run_rounds
finish
