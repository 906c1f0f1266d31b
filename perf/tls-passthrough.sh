#!/usr/bin/env bash
# perf/tls-passthrough.sh — ringlb's CPU per GB for TLS bytes it passes through untouched:
# an SNI router (mode = "tls", passthrough) against a plain tcp listener (the splice relay), in
# one run, both in front of the same nginx TLS backend serving a random file; one curl download
# per round per path. 1 ringlb worker pinned to CPU 0; nginx and curl on CPU 1.
# Every process started here is stopped by PID on exit.
set -euo pipefail
ROUNDS=${ROUNDS:-3}
SIZE_MB=${SIZE_MB:-1024}
RINGLB=${RINGLB:-$(cd "$(dirname "$0")/.." && pwd)/target/release/ringlb}
[[ -x $RINGLB ]] || { echo "build ringlb first (cargo build --release) or set RINGLB" >&2; exit 1; }
for c in nginx curl openssl taskset; do command -v $c >/dev/null || { echo "needs $c" >&2; exit 1; }; done
T=$(mktemp -d /tmp/ringlb-pt.XXXXXX); chmod 755 "$T"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$T"; }
trap cleanup EXIT
mkdir -p "$T/www" "$T/ng"
head -c $((SIZE_MB << 20)) /dev/urandom >"$T/www/bulk"; chmod 755 "$T/www"; chmod 644 "$T/www/bulk"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/tls.key" -out "$T/tls.pem" \
    -days 2 -subj /CN=perf.test 2>/dev/null
cat >"$T/ng.conf" <<NG
worker_processes 1;
daemon off;
pid $T/ng/nginx.pid;
error_log $T/ng/error.log crit;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $T/ng/b; proxy_temp_path $T/ng/p; fastcgi_temp_path $T/ng/f; uwsgi_temp_path $T/ng/u; scgi_temp_path $T/ng/s;
    server {
        listen 127.0.0.1:18500 ssl;
        ssl_certificate $T/tls.pem;
        ssl_certificate_key $T/tls.key;
        location / { root $T/www; }
    }
}
NG
cat >"$T/ringlb.toml" <<RL
[runtime]
workers = 1
pin_cores = false
[[listener]]
name = "pass"
mode = "tls"
listen = "127.0.0.1:18501"
sni = [{ names = ["*"], upstream = "tlsbe" }]
[[listener]]
name = "plain"
mode = "tcp"
listen = "127.0.0.1:18502"
upstream = "tlsbe"
[upstream.tlsbe]
servers = [{ addr = "127.0.0.1:18500" }]
RL
taskset -c 1 nginx -p "$T/ng" -c "$T/ng.conf" >/dev/null 2>&1 & PIDS+=($!)
taskset -c 0 "$RINGLB" -c "$T/ringlb.toml" >"$T/ringlb.log" 2>&1 & RP=$!; PIDS+=($RP)
for _ in $(seq 50); do curl -sk -o /dev/null https://127.0.0.1:18501/ 2>/dev/null && break; sleep 0.1; done
ticks() { awk '{print $14 + $15}' "/proc/$RP/stat"; }
hz=$(getconf CLK_TCK)
echo "round path Gbit/s ringlb_CPU-s/GB"
for r in $(seq "$ROUNDS"); do
    for p in pass:18501 plain:18502; do
        t0=$(ticks)
        read -r bytes secs < <(taskset -c 1 curl -sk -o /dev/null -w '%{size_download} %{time_total}\n' "https://127.0.0.1:${p#*:}/bulk")
        t1=$(ticks)
        awk -v r="$r" -v n="${p%%:*}" -v b="$bytes" -v s="$secs" -v t=$((t1 - t0)) -v hz="$hz" \
            'BEGIN { printf "%s %s %.2f %.3f\n", r, n, b * 8 / s / 1e9, t / hz / (b / 1e9) }'
    done
done
