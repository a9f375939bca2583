"""The serving process's malloc arenas are bounded (issue 39: RSS within +300 MB over a 16-client load)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from diffusion.serving.memory import malloc_arena_count

# 16 threads each allocate and free a few MB of tensors, as Gradio's handler threads do; prints the arena count.
THREADS = textwrap.dedent("""
    import sys, threading, torch
    from diffusion.serving.memory import limit_malloc_arenas, malloc_arena_count
    if sys.argv[1] == "limit":
        assert limit_malloc_arenas(2)
    def work():
        for _ in range(3):
            x = torch.randn(256, 1024)  # 1 MiB each
            del x
    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(malloc_arena_count())
""")


def arenas_after_threads(mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", THREADS, mode], capture_output=True, text=True, timeout=120,
                            env={"OMP_NUM_THREADS": "1"}, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    return int(result.stdout.split()[-1])


@pytest.mark.skipif(malloc_arena_count() is None, reason="glibc only (mallopt, malloc_info)")
def test_two_arenas_for_sixteen_threads_where_the_default_makes_more():
    assert arenas_after_threads("default") > 2
    assert arenas_after_threads("limit") <= 2
