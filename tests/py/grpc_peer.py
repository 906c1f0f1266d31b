"""A gRPC server and client for ringlb's tests, on grpcio with raw-bytes
methods (no generated stubs).

  grpc_peer.py server --name NAME [--events FILE] [--tls CERT KEY]
      prints its port, serves until killed
  grpc_peer.py client --target HOST:PORT [--ca FILE --name NAME] SCENARIO [ARGS...]
      prints one JSON line
"""
import argparse
import json
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

BIG = 16 * 1024 * 1024
OPTS = [
    ("grpc.max_receive_message_length", BIG),
    ("grpc.max_send_message_length", BIG),
]
SVC = "/ringlb.test.T/"


def pattern(n, seed=7):
    return bytes((i * 31 + seed) % 251 for i in range(n))


def server(args):
    events = open(args.events, "a", buffering=1) if args.events else None
    lock = threading.Lock()

    def record(line):
        if events:
            with lock:
                events.write(line + "\n")

    name = args.name.encode()

    def unary(req, ctx):
        if req.startswith(b"fail:"):
            ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + req[5:].decode())
        if req.startswith(b"unavailable"):
            ctx.abort(grpc.StatusCode.UNAVAILABLE, "backend says unavailable")
        md = dict(ctx.invocation_metadata())
        ctx.set_trailing_metadata((("x-served-by", args.name),))
        return name + b":" + req + b":" + md.get("x-forwarded-for", "").encode()

    def echo(req, ctx):
        return req

    def server_stream(req, ctx):
        n, size = (int(x) for x in req.decode().split(","))
        for i in range(n):
            yield pattern(size, i)

    def client_stream(it, ctx):
        count = total = 0
        for m in it:
            count += 1
            total += len(m)
        return f"{count},{total}".encode()

    def bidi(it, ctx):
        for m in it:
            yield m

    def ticker(it, ctx):
        # Ticks on its own clock while the client's messages are read
        # beside; last, how many messages came.
        got = []
        reader = threading.Thread(target=lambda: got.extend(it), daemon=True)
        reader.start()
        n, interval = 0, 0.3
        while reader.is_alive() or n == 0:
            yield b"tick"
            n += 1
            reader.join(interval)
        yield f"got:{len(got)}".encode()

    def slow(req, ctx):
        ms = int(req.decode())
        record("slow-start")
        until = time.time() + ms / 1000
        while time.time() < until:
            if not ctx.is_active():
                record("cancelled")
                return b""
            time.sleep(0.01)
        record("slow-done")
        return b"slow"

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Ticker": grpc.stream_stream_rpc_method_handler(ticker),
    }
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=OPTS)
    srv.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("ringlb.test.T", handlers),))
    if args.tls:
        cert, key = (open(f, "rb").read() for f in args.tls)
        port = srv.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    else:
        port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()

    def graceful(*_):
        # SIGTERM: GOAWAY, let calls in flight finish (up to 10 s), exit.
        def stop():
            record("stopping")
            srv.stop(10).wait()
            record("stopped")
            os._exit(0)

        threading.Thread(target=stop, daemon=True).start()

    signal.signal(signal.SIGTERM, graceful)
    print(port, flush=True)
    srv.wait_for_termination()


def client(args):
    if args.ca:
        creds = grpc.ssl_channel_credentials(root_certificates=open(args.ca, "rb").read())
        opts = OPTS + [("grpc.ssl_target_name_override", args.name), ("grpc.default_authority", args.name)]
        ch = grpc.secure_channel(args.target, creds, options=opts)
    else:
        ch = grpc.insecure_channel(args.target, options=OPTS)
    a = args.args
    out = {}
    try:
        if args.scenario == "unary":
            r = ch.unary_unary(SVC + "Unary")(a[0].encode(), timeout=10)
            out = {"code": "OK", "reply": r.decode()}
        elif args.scenario == "trailers":
            r, call = ch.unary_unary(SVC + "Unary").with_call(b"t", timeout=10)
            out = {"code": "OK", "trailers": dict(call.trailing_metadata())}
        elif args.scenario == "echo":
            msg = pattern(int(a[0]))
            r = ch.unary_unary(SVC + "Echo")(msg, timeout=30)
            out = {"code": "OK", "same": r == msg, "len": len(r)}
        elif args.scenario == "server_stream":
            n, size = int(a[0]), int(a[1])
            got = list(ch.unary_stream(SVC + "ServerStream")(f"{n},{size}".encode(), timeout=30))
            out = {
                "code": "OK",
                "count": len(got),
                "same": all(m == pattern(size, i) for i, m in enumerate(got)),
            }
        elif args.scenario == "client_stream":
            n, size = int(a[0]), int(a[1])
            r = ch.stream_unary(SVC + "ClientStream")(iter([pattern(size)] * n), timeout=30)
            out = {"code": "OK", "reply": r.decode()}
        elif args.scenario == "bidi":
            n, size = int(a[0]), int(a[1])
            msgs = [pattern(size, i) for i in range(n)]
            got = list(ch.stream_stream(SVC + "Bidi")(iter(msgs), timeout=30))
            out = {"code": "OK", "count": len(got), "same": got == msgs}
        elif args.scenario == "ticker":
            # n client messages, pause ms apart, while the server ticks
            n, pause = int(a[0]), int(a[1])

            def slow_requests():
                for i in range(n):
                    if i:
                        time.sleep(pause / 1000)
                    yield b"m"

            got = list(ch.stream_stream(SVC + "Ticker")(slow_requests(), timeout=60))
            out = {"code": "OK", "last": got[-1].decode() if got else "", "ticks": len(got) - 1}
        elif args.scenario == "deadline":
            ch.unary_unary(SVC + "Slow")(a[1].encode(), timeout=int(a[0]) / 1000)
            out = {"code": "OK"}
        elif args.scenario == "cancel":
            fut = ch.unary_unary(SVC + "Slow").future(a[0].encode(), timeout=30)
            time.sleep(int(a[1]) / 1000)
            fut.cancel()
            out = {"code": "CANCELLED" if fut.cancelled() else "NOT_CANCELLED"}
        elif args.scenario == "spread":
            names = {}
            call = ch.unary_unary(SVC + "Unary")
            for i in range(int(a[0])):
                who = call(b"x", timeout=10).split(b":")[0].decode()
                names[who] = names.get(who, 0) + 1
            out = {"code": "OK", "names": names}
        else:
            print(f"unknown scenario {args.scenario}", file=sys.stderr)
            sys.exit(2)
    except grpc.RpcError as e:
        out = {"code": e.code().name, "details": e.details()}
    print(json.dumps(out), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--name", required=True)
    s.add_argument("--events")
    s.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--ca", help="TLS: trust this CA file")
    c.add_argument("--name", help="TLS: the server name to ask for and verify")
    c.add_argument("scenario")
    c.add_argument("args", nargs="*")
    args = p.parse_args()
    server(args) if args.cmd == "server" else client(args)


if __name__ == "__main__":
    main()
