"""The allocator hooks: freed heap pages go back to the system after a cycle (glibc)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from statsfeeder.memory import return_free_memory

    def rss_mb():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    # 1 KB objects come from malloc's heap (not pymalloc); the last one pins the heap's top,
    # so glibc's own trimming at free() cannot give the 200 MB below it back.
    held = [bytes(1000) + bytes([i % 256]) for i in range(200_000)]
    pin = held[-1]
    del held
    before = rss_mb()
    trimmed = return_free_memory()
    print(before, rss_mb(), trimmed)
""")


def run_probe(**env: str) -> tuple[float, float, bool]:
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True,
                         text=True, env={**os.environ, **env}).stdout.split()
    return float(out[0]), float(out[1]), out[2] == "True"


def test_a_cycles_freed_memory_goes_back_to_the_system() -> None:
    before, after, trimmed = run_probe()
    assert trimmed
    assert before - after > 150, (before, after)


def test_the_operators_malloc_arena_max_wins() -> None:
    code = "from statsfeeder.memory import limit_heaps; print(limit_heaps())"
    mine = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, env={**os.environ, "MALLOC_ARENA_MAX": "4"}).stdout
    ours = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, env={k: v for k, v in os.environ.items()
                                          if k != "MALLOC_ARENA_MAX"}).stdout
    assert (mine.strip(), ours.strip()) == ("False", "True")
