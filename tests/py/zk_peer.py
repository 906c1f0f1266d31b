"""ZooKeeper registrar for ringlb's discovery tests (kazoo).

  zk_peer.py ensure HOSTS PATH                 a persistent path (and its parents)
  zk_peer.py register HOSTS PATH DATA TIMEOUT  an ephemeral sequential child with DATA, in a
                                               session of TIMEOUT seconds; prints "registered",
                                               holds it until killed
  zk_peer.py delete HOSTS PATH                 remove a node
  zk_peer.py ls HOSTS PATH                     the children of PATH and their data, as one
                                               JSON object ({} when PATH is missing)
"""
import json
import sys
import time

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError


def main():
    what, hosts, path = sys.argv[1], sys.argv[2], sys.argv[3]
    timeout = float(sys.argv[5]) if what == "register" else 10.0
    zk = KazooClient(
        hosts=hosts,
        timeout=timeout,
        command_retry={"max_tries": 30, "delay": 0.1, "max_delay": 1.0},
    )
    zk.start(timeout=10)
    # A server that just (re)started may drop the first requests
    # (ConnectionLoss): every call is retried.
    if what == "ensure":
        zk.retry(zk.ensure_path, path)
    elif what == "register":
        node = zk.retry(zk.create, path + "/backend-", sys.argv[4].encode(), ephemeral=True, sequence=True)
        print("registered", node, flush=True)
        while True:
            time.sleep(3600)
    elif what == "ls":
        out = {}
        if zk.retry(zk.exists, path):
            for child in zk.retry(zk.get_children, path):
                try:
                    data, _ = zk.retry(zk.get, path + "/" + child)
                except NoNodeError:
                    continue
                out[child] = data.decode()
        print(json.dumps(out), flush=True)
    elif what == "delete":
        zk.retry(zk.delete, path, recursive=True)
    else:
        sys.exit(f"unknown command {what}")
    zk.stop()


if __name__ == "__main__":
    main()
