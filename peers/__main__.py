"""``scripts/peers up|down|status [names…]``: start, stop or show the development peers.

``up`` waits until each named peer is ready and prints ``KEY=VALUE`` lines (addresses and
credentials) that tests and the collector read from the environment.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from peers.common import PeerError

ALL = ("cassandra", "vcsim", "kairosdb", "prometheus")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/peers", description=__doc__)
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"peers to act on (default: all of {', '.join(ALL)})")
    parser.add_argument("--cassandra", default="3.11", choices=("3.11", "4.1", "5.0"),
                        help="Cassandra version (default 3.11, the one vCD documents)")
    parser.add_argument("--cassandra-nodes", type=int, default=1, choices=(1, 3),
                        help="1 node on 127.0.0.1, or 3 nodes on 127.0.0.1-3")
    parser.add_argument("--vcsim-vms", type=int, default=4,
                        help="VMs per resource pool in the default vcsim (default 4)")
    parser.add_argument("--kairosdb-datastore", default="h2", choices=("h2", "cassandra"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    options = parse(sys.argv[1:] if argv is None else argv)
    names = options.names or list(ALL)
    if options.action == "down":
        names = list(reversed(names))
    try:
        for name in names:
            module = importlib.import_module(f"peers.{name}")
            if options.action == "up":
                for key, value in module.up(options).items():
                    print(f"{key}={value}", flush=True)
            elif options.action == "down":
                module.down()
            else:
                print(f"{name}: {module.status()}", flush=True)
    except PeerError as exc:
        print(f"peers: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
