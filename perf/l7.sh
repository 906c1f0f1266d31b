#!/usr/bin/env bash
# perf/l7.sh — whole-system L7 (HTTP/1.1 reverse proxy) comparison on one machine, in one run:
#   direct (wrk -> backend), ringlb (mode = "http"), nginx (http proxy_pass, upstream keepalive),
#   HAProxy (mode http, http-reuse always)
# against the same backend (one nginx, 1 worker, on two ports: `/` "hello\n", `/64k` 64 KiB),
# with wrk -t1 -c64 / -c256 --latency on the small and the 64 KiB response.
# TLS=1: every proxy terminates TLS (one ECDSA P-256 certificate, TLS 1.2 and 1.3, session cache
# and tickets on), wrk speaks HTTPS, and two handshake workloads run per target: full handshakes
# and resumed ones, each connection one GET / (perf/loadtool `tls`, rustls clients; or with
# TLS_CLIENT=s_time, `openssl s_time -new` / `-reuse`). No direct target then.
# H2=1: clients speak HTTP/2 to every proxy (h2c with prior knowledge, or h2 by ALPN with TLS=1:
# ringlb's http listener as it is, nginx `listen ... http2`, HAProxy `bind ... proto h2` / `alpn h2`)
# and h2load replaces wrk: H2_CONNS connections, H2_STREAMS streams each; backends stay HTTP/1.1.
# Method: /work/shared/perf-method.md (see perf/README.md). Every process started here is
# tracked by PID and stopped by the EXIT trap. Shared parts: perf/lib.sh.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
SUMMARIZE="$SCRIPT_DIR/summarize.py"

# ----------------------------------------------------------------------------- knobs
TLS=${TLS:-0}
if [[ $TLS == 1 || ${H2:-0} == 1 ]]; then TARGETS=${TARGETS:-"ringlb nginx haproxy"}; else TARGETS=${TARGETS:-"direct ringlb nginx haproxy"}; fi
H2=${H2:-0}
H2_CONNS=${H2_CONNS:-"4 32"}       # H2=1: h2load -c
H2_STREAMS=${H2_STREAMS:-16}        # H2=1: h2load -m (streams per connection)
if [[ $H2 == 1 ]]; then HANDSHAKES=${HANDSHAKES:-0}; fi
HANDSHAKES=${HANDSHAKES:-1}         # TLS=1: also the full/resumed handshake workloads
TLS_CLIENT=${TLS_CLIENT:-loadtool}  # loadtool (rustls, --concurrency HS_THREADS) or s_time
HS_THREADS=${HS_THREADS:-2}
LOADTOOL_DIR="$SCRIPT_DIR/loadtool"
LOADTOOL=${LOADTOOL:-$LOADTOOL_DIR/target/release/loadtool}
BULK_MB=${BULK_MB:-0}               # > 0: also one curl download of a BULK_MB MiB file through each target (bulk_1stream)
WRK_CONNS=${WRK_CONNS:-"64 256"}
SIZES=${SIZES:-"small 64k"}         # small: GET / ("hello\n"); 64k: GET /64k (65536 bytes)
KEEPALIVE=${KEEPALIVE:-64}          # nginx upstream keepalive (idle connections per worker)
RINGLB_KEEPALIVE=${RINGLB_KEEPALIVE:-default}   # ringlb upstream keepalive: "default" leaves the key out (ringlb's own default)
# shared knobs (ROUNDS DURATION WARMUP IDLE_WAIT PIN RINGLB RINGLB_EXTRA RINGLB_IO_URING PORT_OFFSET
# PAUSE), processes, limits, CPU accounting, backend nginx, wrk, rounds (PX/CL/PWORKERS from PIN)
source "$SCRIPT_DIR/lib.sh"
list_knob WRK_CONNS C_LIST
list_knob SIZES S_LIST
list_knob H2_CONNS H2C_LIST
[[ $H2 == 0 || $H2 == 1 ]] || die "H2 must be 0 or 1"
if [[ $H2 == 1 ]] && has_t direct; then die "H2=1: no direct target (the backend speaks HTTP/1.1)"; fi

declare -A TIDX=([direct]=0 [ringlb]=1 [nginx]=2 [haproxy]=3)
for t in "${T_LIST[@]}"; do [[ -n ${TIDX[$t]+x} ]] || die "unknown target '$t' (direct ringlb nginx haproxy)"; done
for s in "${S_LIST[@]}"; do case $s in small|64k) ;; *) die "unknown size '$s' (small 64k)";; esac; done
for c in "${C_LIST[@]}"; do [[ $c =~ ^[1-9][0-9]*$ ]] || die "WRK_CONNS: '$c' is not a connection count"; done
[[ ${#T_LIST[@]} -gt 0 && ${#S_LIST[@]} -gt 0 && ${#C_LIST[@]} -gt 0 ]] || die "empty TARGETS, SIZES or WRK_CONNS"
[[ $KEEPALIVE =~ ^[1-9][0-9]*$ ]] || die "KEEPALIVE must be >= 1"
[[ $TLS == 0 || $TLS == 1 ]] || die "TLS must be 0 or 1"
if [[ $TLS == 1 ]] && has_t direct; then die "TLS=1: no direct target (the backend speaks plain HTTP)"; fi
SCHEME=http; [[ $TLS == 1 ]] && SCHEME=https

# ports: the backend's two, then one per proxy (direct = the backend's first port)
B1=$((18180 + PORT_OFFSET)); B2=$((18181 + PORT_OFFSET))
port_of() { local i=${TIDX[$1]}; if ((i == 0)); then echo "$B1"; else echo $((18190 + PORT_OFFSET + i)); fi; }
path_of() { [[ $1 == small ]] && echo / || echo /64k; }
BODY_64K=65536

# ----------------------------------------------------------------------------- install
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v ss >/dev/null 2>&1 || need+=(iproute2)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
apt_install "${need[@]}"
command -v python3 >/dev/null 2>&1 || die "python3 is required"
if has_t ringlb; then ensure_ringlb; fi
if [[ $TLS == 1 && $HANDSHAKES == 1 && $TLS_CLIENT == loadtool && $LOADTOOL == "$LOADTOOL_DIR/target/release/loadtool" ]]; then
    log "building perf/loadtool (cargo build --release, its own target dir)"
    (cd "$LOADTOOL_DIR" && cargo build --release -q) || die "cargo build of perf/loadtool failed"
fi

# ----------------------------------------------------------------------------- run dir
init_out_dir "-l7$([[ $H2 == 1 ]] && echo -h2)$([[ $TLS == 1 ]] && echo -tls)$([[ $PIN == 1 ]] || echo -unpinned)"
echo l7 >"$OUT_DIR/kind"   # summarize.py: L7 layout
ports=("$B1" "$B2")
for t in "${T_LIST[@]}"; do [[ $t == direct ]] || ports+=("$(port_of "$t")"); done
check_ports_free "${ports[@]}"
# TLS=1: one certificate for every proxy (HAProxy wants certificate and key in one file)
CERT="$OUT_DIR/conf/tls.pem"; KEY="$OUT_DIR/conf/tls.key"; CERT_KEY="$OUT_DIR/conf/tls-both.pem"
if [[ $TLS == 1 ]]; then
    mkdir -p "$OUT_DIR/conf"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$KEY" -out "$CERT" \
        -days 2 -subj /CN=perf.test -addext subjectAltName=DNS:perf.test 2>/dev/null || die "openssl req failed"
    cat "$CERT" "$KEY" >"$CERT_KEY"
fi

# ----------------------------------------------------------------------------- backend
backend_pids() { pids_with_children "$BE_NGINX_PID"; }   # nginx master + worker
fetch_ok() { # port size: 200 and the right body through that port
    local r want
    local v=()
    [[ $H2 == 1 && $1 != "$B1" && $1 != "$B2" ]] && { [[ $SCHEME == https ]] && v=(--http2) || v=(--http2-prior-knowledge); }
    r=$(timeout 5 curl -sk "${v[@]}" -o /dev/null -w '%{http_code} %{size_download}' "$SCHEME://127.0.0.1:$1$(path_of "$2")" 2>/dev/null) || true
    [[ $2 == small ]] && want="200 6" || want="200 $BODY_64K"
    [[ $r == "$want" ]] || { log "GET $(path_of "$2") on port $1: got '$r', want '$want' (status bytes)"; return 1; }
}
start_backend() {
    local www="$TMP/www" s
    # the worker (an unprivileged user when run as root) must read the file: TMP is 0700
    mkdir -p "$www"; chmod 755 "$TMP" "$www"
    head -c "$BODY_64K" /dev/zero | tr '\0' 'x' >"$www/64k"; chmod 644 "$www/64k"
    if ((BULK_MB > 0)); then head -c "$((BULK_MB << 20))" /dev/urandom >"$www/bulk"; chmod 644 "$www/bulk"; fi
    start_be_nginx "$B1" "$B2" \
"    # /64k: a static 65536-byte file, sent with sendfile, its descriptor cached
    sendfile on;
    tcp_nopush on;
    open_file_cache max=16 inactive=1h;
    open_file_cache_valid 1h;" \
"        location = /64k { root $www; default_type application/octet-stream; }
        location = /bulk { root $www; default_type application/octet-stream; }"
    for s in "${S_LIST[@]}"; do SCHEME=http fetch_ok "$B1" "$s" && SCHEME=http fetch_ok "$B2" "$s" || die "backend nginx does not serve $(path_of "$s") (logs/backend-nginx.*)"; done
}

# ----------------------------------------------------------------------------- proxy configs
# Same everywhere: connect timeout 1s, client/server idle 10m, request head 60s, logging off,
# connection cap MAXCONN, round robin over the backend's two ports, upstream keep-alive.
ringlb_conf() {
    local f="$OUT_DIR/conf/ringlb.toml"
    cat >"$f" <<EOF
[runtime]
workers = $PWORKERS
pin_cores = false   # taskset does the pinning
io_uring = "$RINGLB_IO_URING"

[[listener]]
name = "web"
mode = "http"
listen = "127.0.0.1:$(port_of ringlb)"
upstream = "app"
max_connections = $MAXCONN
connect_timeout = "1s"
header_timeout = "60s"
keepalive_timeout = "10m"
response_timeout = "10m"
$([[ $TLS == 1 ]] && echo "tls = { certs = [{ cert = \"$CERT\", key = \"$KEY\" }]$([[ $H2 == 1 ]] && echo ', alpn = ["h2", "http/1.1"]') }")
${RINGLB_EXTRA:+$RINGLB_EXTRA
}
[upstream.app]
balance = "round_robin"
$([[ $RINGLB_KEEPALIVE == default ]] || echo "keepalive = $RINGLB_KEEPALIVE")
keepalive_timeout = "10m"
servers = [{ addr = "127.0.0.1:$B1" }, { addr = "127.0.0.1:$B2" }]
EOF
    echo "$f"
}
nginx_conf() {
    local f="$OUT_DIR/conf/nginx-http.conf" pre="$TMP/px-nginx"
    cat >"$f" <<EOF
$(nginx_head "$pre" nginx-http "$PWORKERS")
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
        listen 127.0.0.1:$(port_of nginx)$([[ $TLS == 1 ]] && echo " ssl")$([[ $H2 == 1 ]] && echo " http2");
$([[ $H2 == 1 ]] && printf '        http2_max_concurrent_streams 128;\n        keepalive_requests 100000000;\n')
$([[ $TLS == 1 ]] && printf '        ssl_certificate %s;\n        ssl_certificate_key %s;\n        ssl_protocols TLSv1.2 TLSv1.3;\n        ssl_session_cache shared:SSL:10m;\n        ssl_session_tickets on;\n' "$CERT" "$KEY")
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout 10m;
            proxy_send_timeout 10m;
            # default in-memory buffers; never spill a response to a temp file (no disk I/O)
            proxy_max_temp_file_size 0;
        }
    }
}
EOF
    echo "$f"
}
haproxy_conf() {
    local f="$OUT_DIR/conf/haproxy.cfg"
    cat >"$f" <<EOF
global
    nbthread $PWORKERS
    maxconn $MAXCONN
    # no 'log' lines: logging off
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 1s
    timeout client 10m
    timeout server 10m
    timeout http-keep-alive 10m
    timeout http-request 60s
frontend fe_http
    bind 127.0.0.1:$(port_of haproxy)$([[ $TLS == 1 ]] && echo " ssl crt $CERT_KEY")$([[ $H2 == 1 && $TLS == 1 ]] && echo " alpn h2,http/1.1")$([[ $H2 == 1 && $TLS == 0 ]] && echo " proto h2")
    maxconn $MAXCONN
    default_backend be_http
backend be_http
    balance roundrobin
    server s1 127.0.0.1:$B1
    server s2 127.0.0.1:$B2
EOF
    echo "$f"
}

start_proxy() { # target -> PROXY_PID; returns 1 on failure
    local t=$1 s
    PROXY_PID=""
    case $t in
        direct) return 0;;
        ringlb)  launch_ringlb "$(ringlb_conf)" ringlb || return 1;;
        nginx)   launch_nginx "$(nginx_conf)" nginx-http;;
        haproxy) launch_haproxy "$(haproxy_conf)" haproxy || return 1;;
    esac
    if ! wait_listen "$PROXY_PID" 15 "$(port_of "$t")"; then
        log "$t: not listening on $(port_of "$t") within 15s (logs/)"; return 1
    fi
    for s in "${S_LIST[@]}"; do fetch_ok "$(port_of "$t")" "$s" || { log "$t: GET $(path_of "$s") through the proxy failed"; return 1; }; done
    if [[ $TLS == 1 ]]; then
        timeout 5 openssl s_client -connect "127.0.0.1:$(port_of "$t")" -servername perf.test </dev/null 2>&1 \
            | grep -E "^(New|Protocol|    Cipher)" >"$OUT_DIR/logs/tls-$t.txt" || true
    fi
}

# ----------------------------------------------------------------------------- workloads
url_of() { echo "$SCHEME://127.0.0.1:$(port_of "$1")$(path_of "$2")"; }
warm_up() { # target (unrecorded)
    local s
    if [[ $H2 == 1 ]]; then
        for s in "${S_LIST[@]}"; do
            timeout $((WARMUP + 20)) "${CL[@]}" h2load -t1 -c"${H2C_LIST[0]}" -m"$H2_STREAMS" -D"$WARMUP" "$(url_of "$1" "$s")" </dev/null >/dev/null 2>&1 || true
        done
        return 0
    fi
    for s in "${S_LIST[@]}"; do wrk_warm "$(url_of "$1" "$s")" "${C_LIST[0]}" "$WARMUP"; done
}
run_workloads() { # target: wrk_<size>_c<conns>, or with H2=1 h2_<size>_c<conns>m<streams>
    local s c
    if [[ $H2 == 1 ]]; then
        for s in "${S_LIST[@]}"; do
            for c in "${H2C_LIST[@]}"; do
                sleep "$PAUSE"
                h2_measure "$1" "h2_${s}_c${c}m$H2_STREAMS" "$(url_of "$1" "$s")" "$c"
            done
        done
        return 0
    fi
    for s in "${S_LIST[@]}"; do
        for c in "${C_LIST[@]}"; do
            sleep "$PAUSE"
            wrk_measure "$1" "wrk_${s}_c$c" "$(url_of "$1" "$s")" "$c"
        done
    done
    if ((BULK_MB > 0)); then sleep "$PAUSE"; bulk_measure "$1"; fi
    if [[ $TLS == 1 && $HANDSHAKES == 1 ]]; then
        if [[ $TLS_CLIENT == loadtool ]]; then
            sleep "$PAUSE"; hs_measure "$1" tls_new false
            sleep "$PAUSE"; hs_measure "$1" tls_resumed true
        else
            sleep "$PAUSE"; stime_measure "$1" tls_new -new
            sleep "$PAUSE"; stime_measure "$1" tls_resumed -reuse
        fi
    fi
}

# one recorded download of /bulk (BULK_MB MiB) through the target, one stream, by curl
bulk_measure() { # target
    local t=$1 wl=bulk_1stream out="$OUT_DIR/out/r${ROUND}-$1-bulk_1stream.txt" rc=0 bytes secs
    m_begin http
    timeout 120 "${CL[@]}" curl -sk -o /dev/null -w '%{size_download} %{time_total}\n' \
        "$SCHEME://127.0.0.1:$(port_of "$t")/bulk" </dev/null >"$out" 2>&1 || rc=$?
    m_snap
    read -r bytes secs <"$out"
    if ((rc)) || [[ $bytes != $((BULK_MB << 20)) ]]; then
        log "  $t $wl FAILED (rc=$rc, $bytes bytes, $out)"; note "$t" failed "$wl" 1; return 0
    fi
    m_emit "$wl" "$bytes" bytes
    emit "$wl" gbps "$(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.3f", b * 8 / s / 1e9 }')"
    log "  $t $wl: $bytes bytes in ${secs}s ($(awk -v b="$bytes" -v s="$secs" 'BEGIN { printf "%.2f", b * 8 / s / 1e9 }') Gbit/s)"
}

# one recorded loadtool `tls` run: HS_THREADS blocking rustls clients for DURATION seconds, each
# connection a handshake (full, or resumed from the shared session store) and one GET /;
# rps = connections per second, proxy CPU per 100k connections, and the share that resumed
hs_measure() { # target workload resume(true|false)
    local t=$1 wl=$2 out="$OUT_DIR/out/r${ROUND}-$1-$2.txt" rc=0 n res secs
    m_begin http
    timeout $((DURATION + 30)) "${CL[@]}" "$LOADTOOL" tls --target "127.0.0.1:$(port_of "$t")" \
        --duration "$DURATION" --concurrency "$HS_THREADS" --resume "$3" </dev/null >"$out" 2>&1 || rc=$?
    m_snap
    n=$(sed -n 's/.*handshakes=\([0-9]*\).*/\1/p' "$out"); res=$(sed -n 's/.*resumed=\([0-9]*\).*/\1/p' "$out")
    secs=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' "$out")
    if ((rc)) || [[ -z $n || $n == 0 ]]; then
        log "  $t $wl FAILED (rc=$rc, $out)"; note "$t" failed "$wl" 1; return 0
    fi
    m_emit "$wl" "$n" req
    emit "$wl" requests "$n"
    emit "$wl" resumed_frac "$(awk -v n="$n" -v r="$res" 'BEGIN { printf "%.3f", r / n }')"
    emit "$wl" rps "$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')"
    log "  $t $wl: $n connections in ${secs}s ($(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')/s), $res resumed"
}

# one recorded `openssl s_time` run: handshakes (no request) for DURATION seconds;
# emitted as rps = handshakes per second, and proxy CPU per 100k handshakes
stime_measure() { # target workload -new|-reuse
    local t=$1 wl=$2 out="$OUT_DIR/out/r${ROUND}-$1-$2.txt" rc=0 n secs
    m_begin http
    timeout $((DURATION + 30)) "${CL[@]}" openssl s_time -connect "127.0.0.1:$(port_of "$t")" "$3" \
        -time "$DURATION" </dev/null >"$out" 2>&1 || rc=$?
    m_snap
    # "N connections in S real seconds"
    read -r n secs < <(awk '/connections in .* real seconds/ { print $1, $4; exit }' "$out")
    if ((rc)) || [[ -z $n || $n == 0 ]]; then
        log "  $t $wl FAILED (rc=$rc, $out)"; note "$t" failed "$wl" 1; return 0
    fi
    m_emit "$wl" "$n" req
    emit "$wl" requests "$n"
    emit "$wl" rps "$(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.1f", n / s }')"
    log "  $t $wl: $n handshakes in ${secs}s ($(awk -v n="$n" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')/s)"
}

# ----------------------------------------------------------------------------- setup record
write_setup() {
    {
        echo "# Setup (L7)"
        echo
        setup_host_lines
        echo "- nginx: $(nginx -v 2>&1 | sed 's/^nginx version: //')"
        echo "- haproxy: $(haproxy -v 2>&1 | head -1)"
        echo "- wrk: $(wrk -v 2>&1 | head -1)"
        setup_ringlb_lines
        setup_limits_line
        echo
        echo "## Command line"
        echo
        echo '```'
        echo "ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP TARGETS=\"$TARGETS\" WRK_CONNS=\"$WRK_CONNS\" SIZES=\"$SIZES\" TLS=$TLS H2=$H2 H2_CONNS=\"$H2_CONNS\" H2_STREAMS=$H2_STREAMS \\"
        echo "  KEEPALIVE=$KEEPALIVE RINGLB_KEEPALIVE=$RINGLB_KEEPALIVE PIN=$PIN PORT_OFFSET=$PORT_OFFSET RINGLB=$RINGLB RINGLB_IO_URING=$RINGLB_IO_URING RINGLB_EXTRA='$RINGLB_EXTRA' \\"
        echo "  $0 $*"
        echo '```'
        echo
        echo "## Method"
        echo
        setup_pin_line
        echo "- Backend: one nginx, 1 worker, on ports $B1 and $B2 (keepalive_requests 1e8, keepalive_timeout 600s): \`GET /\` → \`return 200 \"hello\\n\"\`; \`GET /64k\` → a static 65536-byte file (sendfile, open_file_cache). direct = wrk straight to port $B1."
        echo "- Proxies, round robin over both ports, logging off, connect timeout 1s, client and server idle 10m, request-head timeout 60s, connection cap $MAXCONN:"
        echo "  ringlb \`mode = \"http\"\`, upstream \`keepalive = $RINGLB_KEEPALIVE\`; nginx http \`proxy_pass\` to an upstream block with \`keepalive $KEEPALIVE\`, \`proxy_http_version 1.1\`, \`proxy_set_header Connection \"\"\` (default proxy buffers, \`proxy_max_temp_file_size 0\`, keepalive_requests 1e8 both sides); HAProxy \`mode http\`, \`http-reuse always\`. Configs in conf/."
        echo "- Each round starts every target in turn (order rotated per round), warms it up unrecorded (wrk ${WARMUP}s per response size), runs the measurements, and stops it (SIGTERM by PID)."
        echo "- CPU: utime+stime from /proc/PID/stat of the proxy (nginx master + worker; HAProxy and ringlb: one process, all threads) and of the backend nginx (master + worker) before and after each measurement; machine CPU from /proc/stat (busy = all but idle and iowait); client CPU from the shell's children times."
        if [[ $H2 == 1 ]]; then
            echo "- H2=1: clients speak HTTP/2 to the proxy ($([[ $TLS == 1 ]] && echo "h2 by ALPN" || echo "h2c with prior knowledge")): ringlb's http listener$([[ $TLS == 1 ]] && echo " with \`alpn = [\"h2\", \"http/1.1\"]\`"), nginx \`listen ... http2\` (\`http2_max_concurrent_streams 128\`), HAProxy \`bind ... $([[ $TLS == 1 ]] && echo "alpn h2,http/1.1" || echo "proto h2")\`; the backend stays HTTP/1.1 (each proxy's keep-alive pool)."
            echo "- Clients: h2load -t1 -c{$H2_CONNS} -m$H2_STREAMS -D${DURATION} on {$SIZES}; p50/p99 from h2load's per-request log."
        else
            echo "- Clients: wrk -t1 -c{$WRK_CONNS} -d${DURATION}s --latency on {$SIZES} (/ and /64k)."
        fi
        if [[ $TLS == 1 ]]; then
            echo "- TLS=1: every proxy terminates TLS with the same ECDSA P-256 certificate (conf/tls.pem), TLS 1.2 and 1.3 offered, each proxy's default cipher order (the negotiated suite per target is in logs/tls-<target>.txt); session cache and tickets on (nginx \`ssl_session_cache shared:SSL:10m\`, \`ssl_session_tickets on\`; HAProxy and ringlb by default). wrk speaks HTTPS to the proxy (keep-alive, so handshakes are few); the backend stays plain HTTP."
            ((BULK_MB > 0)) && echo "- Bulk: one \`curl -o /dev/null\` download of a ${BULK_MB} MiB random file (backend: sendfile) through the proxy, one stream; Gbit/s and proxy CPU-s per GB."
            if [[ $HANDSHAKES == 1 && $TLS_CLIENT == loadtool ]]; then
                echo "- Handshakes: \`perf/loadtool tls --concurrency $HS_THREADS --duration ${DURATION}\` (blocking rustls clients; each connection: a handshake, one \`GET /\`, close). tls_new: a fresh client configuration per connection (a full handshake each); tls_resumed: one shared session store (after the first, sessions resume; resumed_frac says how many did). rps = connections per second, proxy CPU per 100k connections (handshake and one small request)."
            elif [[ $HANDSHAKES == 1 ]]; then
                echo "- Handshakes: \`openssl s_time -connect ... -new -time ${DURATION}\` (tls_new) and \`-reuse\` (tls_resumed), one client process; rps = handshakes per second, proxy CPU per 100k handshakes."
            fi
        fi
    } >"$OUT_DIR/SETUP.md"
    echo "L7, PIN=$PIN ($(pin_summary)); $(nginx -v 2>&1 | sed 's/^nginx version: //'), HAProxy $(haproxy -v 2>&1 | head -1 | awk '{print $3}')$(ringlb_meta); host $(hostname), kernel $(uname -r). See SETUP.md." >"$OUT_DIR/meta.txt"
}

# ----------------------------------------------------------------------------- main
write_setup "$@"
log "results: $OUT_DIR"
log "targets: ${T_LIST[*]}; sizes: ${S_LIST[*]}; connections: ${C_LIST[*]}; rounds: $ROUNDS; PIN=$PIN"
start_backend
run_rounds
finish
