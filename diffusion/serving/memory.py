"""How the serving process gives memory back: glibc's malloc arenas.

glibc gives each thread that allocates its own malloc arena (up to 8 per core), and memory freed in one arena is
reused only by threads that land in it. The app runs handlers on Gradio's pool of up to 40 threads, so the sampling
buffers of one request after another are spread over many arenas that each keep their peak: a 16-client load of
64 requests grew the server by 216 MiB with the default and by 51 MiB with two arenas (docs/loadtest.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import tempfile

M_ARENA_MAX = -8  # mallopt's parameter number for the arena limit (glibc's malloc.h)


def _glibc():
    """The C library when it is glibc (it has mallopt and malloc_info), else None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_info") else None


def limit_malloc_arenas(count: int = 2) -> bool:
    """At most `count` malloc arenas from now on (call it before the threads start); False where not glibc."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_ARENA_MAX, count) == 1)


def malloc_arena_count() -> int | None:
    """How many arenas glibc has made so far (the heaps malloc_info lists), or None where not glibc."""
    libc = _glibc()
    if libc is None:
        return None
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    handle, path = tempfile.mkstemp(suffix=".xml")
    os.close(handle)
    try:
        stream = libc.fopen(path.encode(), b"w")
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        with open(path) as report:
            return report.read().count("<heap nr=")
    finally:
        os.unlink(path)
