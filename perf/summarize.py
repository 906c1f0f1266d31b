#!/usr/bin/env python3
"""Parse client outputs and summarise perf/l4.sh, perf/l7.sh and perf/udp.sh runs (stdlib
only; the `compare` chart uses matplotlib when it is there).

Sub-commands:
  parse-wrk FILE        -> "metric value" lines from `wrk --latency` text output
  parse-redis FILE      -> "metric value" lines from `redis-benchmark --csv` output
  parse-iperf FILE      -> "metric value" lines from `iperf3 -J` output
  summarize RUN_DIR     -> reads RUN_DIR/raw.csv, writes RUN_DIR/summary.md, prints it
  compare OUT_DIR PNG RUN_DIR...
                        -> one table of ratios to ringlb over several runs (OUT_DIR/compare.md,
                           printed) and a bar chart of them (PNG; perf/compare.sh)

raw.csv columns: round,target,workload,metric,value
RUN_DIR/kind holding "l7" (written by perf/l7.sh) selects the L7 layout: one comparison table
(req/s, p50/p99, proxy CPU, with ratios to direct and to ringlb) and ringlb's goals.
Figures are reported as median (min-max) over rounds. Ratios are paired per round
(target / reference in the same round), then the median and min-max of those.
"""
import csv
import json
import os
import re
import statistics
import sys
from collections import defaultdict

TARGET_ORDER = ["direct", "ringlb", "ringlb-copy", "ringlb-splice", "nginx", "haproxy", "haproxy-nosplice"]


# --------------------------------------------------------------------------- parsers

def _dur_ms(s):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", s.strip())
    if not m:
        return None
    v, u = float(m.group(1)), m.group(2)
    return v * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[u]


def parse_wrk(path):
    text = open(path, errors="replace").read()
    out = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if m:
        out["rps"] = float(m.group(1))
    m = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB|TB)", text)
    if m:
        scale = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}[m.group(2)]
        out["transfer_mib_s"] = float(m.group(1)) * scale / (1 << 20)
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if m:
        out["requests"] = int(m.group(1))
    for pct, val in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", text, re.M):
        ms = _dur_ms(val)
        if ms is not None:
            out[f"lat_p{pct}_ms"] = ms
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(x) for x in m.groups()) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    return out


def parse_redis(path):
    out = {}
    with open(path, errors="replace") as f:
        rows = [r for r in csv.reader(f) if r]
    if not rows:
        return out
    header = rows[0]
    for r in rows[1:]:
        if len(r) != len(header):
            continue
        rec = dict(zip(header, r))
        test = rec.get("test", "").lower()
        if not test:
            continue
        try:
            out[f"{test}_rps"] = float(rec["rps"])
            out[f"{test}_p50_ms"] = float(rec["p50_latency_ms"])
            out[f"{test}_p99_ms"] = float(rec["p99_latency_ms"])
        except (KeyError, ValueError):
            pass
    return out


def parse_iperf(path):
    try:
        d = json.load(open(path))
    except (OSError, ValueError):
        return {}
    if d.get("error"):
        return {}
    end = d.get("end", {})
    recv = end.get("sum_received", {})
    sent = end.get("sum_sent", {})
    out = {}
    if recv.get("bits_per_second"):
        out["gbps"] = recv["bits_per_second"] / 1e9
        out["bytes"] = int(recv.get("bytes", 0))
    if "retransmits" in sent:
        out["retransmits"] = sent["retransmits"]
    return out


def cmd_parse(kind, path):
    fn = {"parse-wrk": parse_wrk, "parse-redis": parse_redis, "parse-iperf": parse_iperf}[kind]
    for k, v in fn(path).items():
        print(k, v)


# --------------------------------------------------------------------------- summary

# main throughput metric(s) per workload family
def throughput_metrics(workload):
    if workload.startswith("redis"):
        return ["get_rps", "set_rps"]
    if workload.startswith("wrk"):
        return ["rps"]
    if workload.startswith("iperf"):
        return ["gbps"]
    return []


def unit_suffix(workload):
    return "per_GB" if workload.startswith("iperf") else "per_100k_req"


LABELS = {
    "get_rps": "GET req/s",
    "set_rps": "SET req/s",
    "rps": "req/s",
    "transfer_mib_s": "transfer MiB/s",
    "gbps": "Gbit/s",
    "get_p50_ms": "GET p50 ms",
    "get_p99_ms": "GET p99 ms",
    "set_p50_ms": "SET p50 ms",
    "set_p99_ms": "SET p99 ms",
    "lat_p50_ms": "latency p50 ms",
    "lat_p75_ms": "latency p75 ms",
    "lat_p90_ms": "latency p90 ms",
    "lat_p99_ms": "latency p99 ms",
    "retransmits": "retransmits",
    "socket_errors": "socket errors",
    "non2xx": "non-2xx responses",
    "proxy_over_backend": "proxy CPU ÷ backend CPU",
    "proxy_cpu_s": "proxy CPU-s",
    "backend_cpu_s": "backend CPU-s",
    "proxy_cpu_s_per_100k_req": "proxy CPU-s / 100k req",
    "proxy_cpu_s_per_GB": "proxy CPU-s / GB",
    "backend_cpu_s_per_100k_req": "backend CPU-s / 100k req",
    "backend_cpu_s_per_GB": "backend CPU-s / GB",
    "machine_cpu_s_per_100k_req": "machine CPU-s / 100k req",
    "machine_cpu_s_per_GB": "machine CPU-s / GB",
    "machine_added_per_100k_req": "machine CPU-s / 100k req added over direct",
    "machine_added_per_GB": "machine CPU-s / GB added over direct",
    "machine_cpu_s": "machine CPU-s",
    "client_cpu_s": "client CPU-s",
    "unattributed_cpu_s": "unattributed CPU-s (machine − proxy − backend − client)",
    "unattributed_frac": "unattributed ÷ machine CPU",
    "cpu0_s": "CPU0 busy s",
    "cpu1_s": "CPU1 busy s",
    "wall_s": "wall s",
}

DETAIL_ORDER = [
    "get_rps", "set_rps", "rps", "transfer_mib_s", "gbps",
    "get_p50_ms", "get_p99_ms", "set_p50_ms", "set_p99_ms",
    "lat_p50_ms", "lat_p75_ms", "lat_p90_ms", "lat_p99_ms",
    "proxy_over_backend",
    "proxy_cpu_s_per_100k_req", "proxy_cpu_s_per_GB",
    "backend_cpu_s_per_100k_req", "backend_cpu_s_per_GB",
    "machine_cpu_s_per_100k_req", "machine_cpu_s_per_GB",
    "machine_added_per_100k_req", "machine_added_per_GB",
    "proxy_cpu_s", "backend_cpu_s", "client_cpu_s", "machine_cpu_s", "unattributed_cpu_s", "unattributed_frac",
    "cpu0_s", "cpu1_s", "wall_s",
    "retransmits", "socket_errors", "non2xx",
]


def fmt(v, metric=""):
    if v is None:
        return "–"
    a = abs(v)
    if metric.endswith("rps") or metric in ("requests", "bytes"):
        if a >= 1e6:
            return f"{v/1e6:.2f}M"
        if a >= 1e3:
            return f"{v/1e3:.1f}k"
        return f"{v:.0f}"
    if metric in ("socket_errors", "non2xx", "retransmits"):
        return f"{v:.0f}"
    if a == 0:
        return "0"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def med_range(vals, metric=""):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "–"
    m = statistics.median(vals)
    if len(vals) == 1:
        return fmt(m, metric)
    return f"{fmt(m, metric)} ({fmt(min(vals), metric)}–{fmt(max(vals), metric)})"


def median_or_none(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def load(run_dir):
    # data[workload][metric][target][round] = value
    data = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    status = []
    with open(os.path.join(run_dir, "raw.csv")) as f:
        for row in csv.DictReader(f):
            try:
                val = float(row["value"])
            except ValueError:
                continue
            rnd = int(row["round"])
            if row["workload"].startswith("_"):
                status.append(row)
                continue
            data[row["workload"]][row["metric"]][row["target"]][rnd] = val
    return data, status


def derive(data):
    """Add machine CPU added over direct (paired per round)."""
    for wl, metrics in data.items():
        suf = unit_suffix(wl)
        mk = f"machine_cpu_s_{suf}"
        if mk not in metrics or "direct" not in metrics[mk]:
            continue
        direct = metrics[mk]["direct"]
        for tgt, per_round in list(metrics[mk].items()):
            if tgt == "direct":
                continue
            for rnd, v in per_round.items():
                if rnd in direct:
                    metrics[f"machine_added_{suf}"][tgt][rnd] = v - direct[rnd]


def paired_ratio(metric_data, tgt, ref):
    a, b = metric_data.get(tgt, {}), metric_data.get(ref, {})
    out = []
    for rnd, v in a.items():
        if rnd in b and b[rnd]:
            out.append(v / b[rnd])
    return out


def targets_in(data):
    seen = set()
    for metrics in data.values():
        for per_t in metrics.values():
            seen.update(per_t.keys())
    order = [t for t in TARGET_ORDER if t in seen]
    order += sorted(seen - set(order))
    return order


def workload_sort_key(wl):
    fam = {"redis": 0, "wrk": 1, "iperf": 2}
    f = next((v for k, v in fam.items() if wl.startswith(k)), 9)
    # L7: wrk_<size>_c<conns>, small first, then by size, then by connections
    m = re.fullmatch(r"wrk_(small|(\d+)k)_c(\d+)", wl)
    if m:
        return (f, [0 if m.group(1) == "small" else int(m.group(2)), int(m.group(3))], wl)
    nums = [int(x) for x in re.findall(r"\d+", wl)]
    return (f, nums, wl)


def table_header(first, columns):
    """Markdown table head: the first column names, then one column per target (or goal)."""
    names = list(first) + list(columns)
    return ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]


def run_kind(run_dir):
    try:
        return open(os.path.join(run_dir, "kind")).read().strip() or "l4"
    except OSError:
        return "l4"


# --------------------------------------------------------------------------- L7 layout

L7_GOALS = [  # (label, metric, reference, limit, higher_is_better)
    ("req/s ÷ direct ≥ 0.85", "rps", "direct", 0.85, True),
    ("proxy CPU ÷ backend CPU ≤ 1.2", "proxy_over_backend", None, 1.2, False),
    ("p99 ÷ nginx p99 ≤ 1", "lat_p99_ms", "nginx", 1.0, False),
]


def errors_of(metrics, tgt):
    """Socket errors + non-2xx responses per round."""
    out = defaultdict(float)
    for m in ("socket_errors", "non2xx"):
        for rnd, v in metrics.get(m, {}).get(tgt, {}).items():
            out[rnd] += v
    return out


def l7_comparison(data, wls, targets, goals=True):
    """One table: per workload, figures as median (min–max) and paired ratios to direct / ringlb."""
    L = ["## Comparison", "",
         "Per workload: median (min–max) over rounds; ratios paired per round. "
         "Errors = wrk socket errors + non-2xx responses.", ""] + table_header(["workload", "metric"], targets)

    def value_row(wl, label, metric, md):
        cells = [med_range(list(md.get(t, {}).values()), metric) for t in targets]
        if any(c != "–" for c in cells):
            L.append(f"| {wl} | {label} | " + " | ".join(cells) + " |")

    def ratio_row(wl, label, md, ref):
        if ref not in targets:
            return
        cells = []
        for t in targets:
            if t == ref:
                cells.append("1" if md.get(ref) else "–")
            else:
                cells.append(med_range(paired_ratio(md, t, ref), "ratio"))
        if any(c not in ("–", "1") for c in cells):
            L.append(f"| {wl} | {label} | " + " | ".join(cells) + " |")

    for wl in wls:
        metrics = data[wl]
        get = lambda m: metrics.get(m, {})
        value_row(wl, "Gbit/s", "gbps", get("gbps"))
        ratio_row(wl, "Gbit/s ÷ ringlb", get("gbps"), "ringlb")
        value_row(wl, "proxy CPU-s / GB", "proxy_cpu_s_per_GB", get("proxy_cpu_s_per_GB"))
        ratio_row(wl, "proxy CPU-s / GB ÷ ringlb", get("proxy_cpu_s_per_GB"), "ringlb")
        value_row(wl, "req/s", "rps", get("rps"))
        ratio_row(wl, "req/s ÷ direct", get("rps"), "direct")
        ratio_row(wl, "req/s ÷ ringlb", get("rps"), "ringlb")
        value_row(wl, "avg ms", "lat_avg_ms", get("lat_avg_ms"))
        value_row(wl, "p50 ms", "lat_p50_ms", get("lat_p50_ms"))
        value_row(wl, "p99 ms", "lat_p99_ms", get("lat_p99_ms"))
        ratio_row(wl, "p99 ÷ ringlb", get("lat_p99_ms"), "ringlb")
        value_row(wl, "proxy CPU-s / 100k req", "proxy_cpu_s_per_100k_req", get("proxy_cpu_s_per_100k_req"))
        ratio_row(wl, "proxy CPU-s / 100k req ÷ ringlb", get("proxy_cpu_s_per_100k_req"), "ringlb")
        value_row(wl, "proxy CPU ÷ backend CPU", "proxy_over_backend", get("proxy_over_backend"))
        ratio_row(wl, "proxy CPU ÷ backend CPU, ÷ ringlb", get("proxy_over_backend"), "ringlb")
        value_row(wl, "machine CPU-s / 100k req added over direct", "machine_added_per_100k_req",
                  get("machine_added_per_100k_req"))
        value_row(wl, "unattributed ÷ machine CPU", "unattributed_frac", get("unattributed_frac"))
        errs = {t: errors_of(metrics, t) for t in targets}
        if any(v for e in errs.values() for v in e.values()):
            value_row(wl, "errors", "socket_errors", errs)
    L.append("")

    if goals and "ringlb" in targets:
        L += ["## ringlb goals (issue 4: 1 worker pinned)", "",
              "Median (min–max) over rounds, paired per round; ✓/✗ by the median.", ""]
        L += table_header(["workload"], [g[0] for g in L7_GOALS])
        for wl in wls:
            cells = []
            for _label, metric, ref, limit, higher in L7_GOALS:
                md = data[wl].get(metric, {})
                vals = paired_ratio(md, "ringlb", ref) if ref else list(md.get("ringlb", {}).values())
                if not vals:
                    cells.append("–")
                    continue
                m = statistics.median(vals)
                ok = m >= limit if higher else m <= limit
                cells.append(f"{med_range(vals, 'ratio')} {'✓' if ok else '✗'}")
            L.append(f"| {wl} | " + " | ".join(cells) + " |")
        L.append("")
    return L


def headline(data, wls, targets):
    """L4 layout: the main figures of every workload, medians only."""
    heads = []
    for wl in wls:
        suf = unit_suffix(wl)
        for tm in throughput_metrics(wl):
            heads.append((f"{wl} {LABELS.get(tm, tm)}", wl, tm))
        heads.append((f"{wl} proxy CPU ÷ backend CPU", wl, "proxy_over_backend"))
        heads.append((f"{wl} {LABELS[f'proxy_cpu_s_{suf}']}", wl, f"proxy_cpu_s_{suf}"))
        heads.append((f"{wl} {LABELS[f'machine_added_{suf}']}", wl, f"machine_added_{suf}"))
        heads.append((f"{wl} unattributed ÷ machine CPU", wl, "unattributed_frac"))
    L = []
    L.append("## Headline (medians)")
    L.append("")
    L += table_header(["test"], targets)
    for label, wl, metric in heads:
        md = data[wl].get(metric, {})
        if not md:
            continue
        cells = []
        for t in targets:
            m = median_or_none(list(md.get(t, {}).values()))
            cells.append(fmt(m, metric))
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    L.append("")
    return L


def summarize(run_dir):
    data, status = load(run_dir)
    derive(data)
    targets = targets_in(data)
    rounds = sorted({r for m in data.values() for t in m.values() for pr in t.values() for r in pr})
    setup_line = ""
    meta_path = os.path.join(run_dir, "meta.txt")
    if os.path.exists(meta_path):
        setup_line = open(meta_path).read().strip()
    L = []
    kind = run_kind(run_dir)
    title = {"l7": "L7 HTTP proxy comparison", "udp": "UDP (DNS) proxy comparison"}.get(kind, "L4 proxy comparison")
    L.append(f"# {title} — {os.path.basename(os.path.abspath(run_dir))}")
    L.append("")
    if setup_line:
        L.append(setup_line)
        L.append("")
    failed = [s for s in status if s["workload"] == "_failed"]
    if failed:
        L.append("**Failures:** " + "; ".join(
            f"round {s['round']} {s['target']} {s['metric']}" for s in failed) + " (see Run notes, logs/).")
        L.append("")
    L.append(f"Rounds: {len(rounds)}. Figures: median (min–max) over rounds. "
             "Ratios are paired per round (same round, same backends), then median (min–max). "
             "CPU from /proc/PID/stat utime+stime; machine CPU from /proc/stat (busy = all but idle+iowait). "
             "Unattributed = machine − proxy − backend − client (softirq, kworkers, and any other load on the machine): "
             "a target whose unattributed share is well above direct's in the same round was disturbed or pushes work into the kernel.")
    L.append("")

    wls = sorted(data.keys(), key=workload_sort_key)
    if kind in ("l7", "udp"):
        L += l7_comparison(data, wls, targets, goals=(kind == "l7"))
        L.append("Per workload, every figure:")
        L.append("")
    else:
        L += headline(data, wls, targets)

    # ---------------- per workload detail
    for wl in wls:
        metrics = data[wl]
        L.append(f"## {wl}")
        L.append("")
        L += table_header(["metric"], targets)
        names = [m for m in DETAIL_ORDER if m in metrics]
        names += sorted(m for m in metrics if m not in DETAIL_ORDER and m not in ("requests", "bytes"))
        for m in names:
            cells = [med_range(list(metrics[m].get(t, {}).values()), m) for t in targets]
            L.append(f"| {LABELS.get(m, m)} | " + " | ".join(cells) + " |")
        L.append("")
        # ratios
        suf = unit_suffix(wl)
        ratio_rows = []
        for ref in ("ringlb", "direct"):
            if not any(ref in metrics.get(tm, {}) for tm in throughput_metrics(wl)):
                continue
            for tm in throughput_metrics(wl):
                ratio_rows.append((f"{LABELS.get(tm, tm)} ÷ {ref}", tm, ref))
        if any("ringlb" in metrics.get(m, {}) for m in ("proxy_over_backend",)):
            for m in ("proxy_over_backend", f"proxy_cpu_s_{suf}", f"machine_cpu_s_{suf}"):
                ratio_rows.append((f"{LABELS.get(m, m)} ÷ ringlb", m, "ringlb"))
        if ratio_rows:
            L.append(f"Ratios ({wl}), paired per round:")
            L.append("")
            L += table_header(["ratio"], targets)
            for label, m, ref in ratio_rows:
                cells = []
                for t in targets:
                    if t == ref:
                        cells.append("1")
                        continue
                    r = paired_ratio(metrics.get(m, {}), t, ref)
                    cells.append(med_range(r, "ratio"))
                L.append(f"| {label} | " + " | ".join(cells) + " |")
            L.append("")

    # ---------------- status / failures / machine load
    if status:
        L.append("## Run notes")
        L.append("")
        L.append("| round | target | what | metric | value |")
        L.append("|---|---|---|---|---|")
        for s in status:
            L.append(f"| {s['round']} | {s['target']} | {s['workload']} | {s['metric']} | {s['value']} |")
        L.append("")
    text = "\n".join(L)
    with open(os.path.join(run_dir, "summary.md"), "w") as f:
        f.write(text + "\n")
    print(text)


# --------------------------------------------------------------------------- compare (perf/compare.sh)

COMPARE_ROWS = [  # (workload prefix in its run, throughput metric, label)
    ("wrk_small_c", "rps", "HTTP small responses"),
    ("wrk_64k_c", "rps", "HTTP 64 KiB responses"),
    ("wrk_c", "rps", "HTTP through L4"),
    ("iperf", "gbps", "L4 bulk, one stream"),
    ("dns_c", "rps", "UDP DNS"),
]


def compare(out_dir, run_dirs, png):
    """One table over several runs (l7, l4, udp): per workload, each target's throughput and
    proxy CPU per unit as a ratio to ringlb's (paired per round, median); and a PNG chart."""
    targets_all = ["direct", "ringlb", "nginx", "haproxy"]
    rows = []  # (label, unit, {target: (thr, cpu)}, {target: (thr_ratio, cpu_ratio)})
    for rd in run_dirs:
        data, _ = load(rd)
        for wl in sorted(data.keys(), key=workload_sort_key):
            spec = next((r for r in COMPARE_ROWS if wl.startswith(r[0])), None)
            if spec is None:
                continue
            _, tm, label = spec
            suf = unit_suffix(wl)
            cm = f"proxy_cpu_s_{suf}"
            tgts = [t for t in targets_all if t in data[wl].get(tm, {})]
            vals, ratios = {}, {}
            for t in tgts:
                thr = median_or_none(list(data[wl][tm].get(t, {}).values()))
                cpu = median_or_none(list(data[wl].get(cm, {}).get(t, {}).values()))
                vals[t] = (thr, cpu)
                if t != "ringlb" and "ringlb" in tgts:
                    tr = paired_ratio(data[wl][tm], t, "ringlb")
                    cr = paired_ratio(data[wl].get(cm, {}), t, "ringlb")
                    ratios[t] = (median_or_none(tr), median_or_none(cr))
            conns = re.search(r"_c(\d+)", wl)
            name = f"{label}{', c' + conns.group(1) if conns else ''}"
            rows.append((name, "Gbit/s" if tm == "gbps" else "req/s", suf, vals, ratios))
    present = [t for t in targets_all if any(t in r[3] for r in rows)]
    others = [t for t in present if t not in ("ringlb", "direct")]
    L = ["# ringlb, nginx and HAProxy on this machine", "",
         "Medians over rounds; ratios paired per round. Throughput ÷ ringlb: below 1, ringlb is "
         "faster. CPU ÷ ringlb: above 1, ringlb uses less CPU per request (or per GB).", "",
         "| workload | " + " | ".join(f"{t} {u}" for t in present for u in ["throughput"]) + " | "
         + " | ".join(f"{t} ÷ ringlb throughput | {t} ÷ ringlb CPU" for t in others) + " |",
         "|" + "---|" * (1 + len(present) + 2 * len(others))]
    for name, unit, suf, vals, ratios in rows:
        cells = [fmt(vals.get(t, (None, None))[0], "gbps" if unit == "Gbit/s" else "rps") for t in present]
        for t in others:
            tr, cr = ratios.get(t, (None, None))
            cells += [fmt(tr, "ratio"), fmt(cr, "ratio")]
        L.append(f"| {name} ({unit}) | " + " | ".join(cells) + " |")
    L += ["", "Runs: " + ", ".join(os.path.relpath(os.path.abspath(r), os.path.dirname(os.path.abspath(out_dir))) for r in run_dirs), ""]
    text = "\n".join(L)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no matplotlib: no chart)", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.6 * len(rows) + 2.5))
    names = [r[0] for r in rows]
    for ax, (title, idx) in zip(axes, [("req/s (Gbit/s) ÷ ringlb's: higher is faster", 0),
                                        ("proxy CPU per request (per GB) ÷ ringlb's:\nhigher costs more", 1)]):
        shown = present if idx == 0 else [t for t in present if t != "direct"]
        width = 0.8 / max(1, len(shown))
        for i, t in enumerate(shown):
            ys = []
            for _, _, _, vals, ratios in rows:
                if t == "ringlb":
                    ys.append(1.0 if t in vals else 0)
                elif t == "direct":
                    thr = vals.get("direct", (None, None))[0]
                    base = vals.get("ringlb", (None, None))[0]
                    ys.append(thr / base if idx == 0 and thr and base else 0)
                else:
                    v = ratios.get(t, (None, None))[idx]
                    ys.append(v or 0)
            pos = [k + i * width for k in range(len(rows))]
            colors = {"direct": "tab:gray", "ringlb": "tab:blue", "nginx": "tab:green", "haproxy": "tab:red"}
            ax.barh(pos, ys, height=width, label=t, color=colors.get(t))
        ax.set_yticks([k + width * (len(shown) - 1) / 2 for k in range(len(rows))])
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_title(title, fontsize=10)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"chart: {png}", file=sys.stderr)


def main(argv):
    if len(argv) >= 5 and argv[1] == "compare":
        compare(argv[2], argv[4:], argv[3])
        return 0
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1].startswith("parse-"):
        cmd_parse(argv[1], argv[2])
        return 0
    if argv[1] == "summarize":
        summarize(argv[2])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
