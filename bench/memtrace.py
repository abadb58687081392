"""Where does a long-running ``statsfeeder run`` allocate what it keeps? Runs the service in
this process under tracemalloc and writes, every ``--every`` minutes, the allocation sites
whose live size grew most since the first snapshot taken after ``--warmup`` minutes.

    .venv/bin/python bench/memtrace.py --out /tmp/memtrace.txt -- run -c config.yaml

For a soak's findings (bench/soak_bench.py): point it at the soak's vcsim and Cassandra with a
keyspace of its own; tracemalloc roughly doubles the service's CPU and memory, so its RSS is
not a figure to report, only the growth by site is.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from statsfeeder.cli import main as statsfeeder_main

FRAMES = 6


def report(out: Path, base: tracemalloc.Snapshot, minutes: float, top: int) -> None:
    now = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),))
    current, peak = tracemalloc.get_traced_memory()
    lines = [f"== {minutes:.1f} min: traced {current / 1e6:.1f} MB (peak {peak / 1e6:.1f} MB)"]
    grown = [stat for stat in now.compare_to(base, "traceback") if stat.size_diff > 0]
    for stat in grown[:top]:  # compare_to sorts by the absolute change: shrinkage too
        lines.append(f"+{stat.size_diff / 1e3:.0f} kB in {stat.count_diff:+d} blocks "
                     f"(now {stat.size / 1e3:.0f} kB)")
        lines.extend(f"    {frame}" for frame in stat.traceback.format()[-2 * FRAMES:])
    with out.open("a") as sink:
        sink.write("\n".join(lines) + "\n\n")


def watch(out: Path, warmup: float, every: float, top: int) -> None:
    began = time.monotonic()
    time.sleep(warmup * 60)
    base = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__),))
    while True:
        time.sleep(every * 60)
        report(out, base, (time.monotonic() - began) / 60, top)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--warmup", type=float, default=10, help="minutes before the baseline")
    parser.add_argument("--every", type=float, default=10, help="minutes between reports")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="statsfeeder's arguments, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    tracemalloc.start(FRAMES)
    threading.Thread(target=watch, args=(args.out, args.warmup, args.every, args.top),
                     daemon=True).start()
    return statsfeeder_main(command)


if __name__ == "__main__":
    sys.exit(main())
