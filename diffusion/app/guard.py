"""What one client may ask of the server, checked in front of Gradio's routes (an ASGI middleware):

- one door for work: every handler that does work runs in the queue, and `api_open=False` (app.py) makes Gradio
  refuse it on the direct routes (`/gradio_api/run/<name>`, `/gradio_api/api/<name>`). Those routes serve only the
  handlers declared `queue=False`, the page's instant ones (a sampler's own settings, the estimate line), which
  app.py's build checks run no model (`instant_handlers_problems`). `/gradio_api/queue/join` and
  `/gradio_api/call/<name>` (both queue the job) are checked alike;
- every POST body but an upload is at most MAX_BODY bytes, and a join's body must parse as a JSON object nested at
  most MAX_BODY_DEPTH deep: anything else is HTTP 400 or 413 with a sentence, never a 500;
- at most MAX_PENDING_PER_SESSION jobs waiting or running per browser session (Gradio's session hash) and at most
  MAX_PENDING_PER_ADDRESS per client address, so one client cannot fill the shared queue, with fresh session hashes
  or without;
- uploads: at most UPLOADS_PER_MINUTE and UPLOAD_BYTES_PER_MINUTE per client address, and at most MAX_UPLOAD_BYTES of
  uploads kept on disk (the oldest are deleted first; Gradio's delete_cache removes any older than an hour). One
  address's minute of uploads is a fifth of what the server keeps, so it cannot lock the others out.

The client address is the connection's, or `X-Forwarded-For` only when the connection comes from a proxy named with
app.py's `--trusted-proxy` (uvicorn applies that before this middleware sees the request). The per-address table
forgets an address a minute after its last upload and never holds more than MAX_ADDRESSES.

A refusal is HTTP 429 (or 400, 404, 413) with a sentence as its detail. The queue is read, never changed: the
middleware counts the events Gradio holds.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections import OrderedDict, deque
from pathlib import Path

from diffusion.formats.jsonsafe import load_json

MAX_PENDING_PER_SESSION = 4  # a Generate, its live-mode follow-ups and a study in another tab
MAX_PENDING_PER_ADDRESS = 8  # two users behind one address, or one user's sessions in two browsers
# The Edit tab's image editor uploads its background, paint layer and composite whenever they change: 30-50 files
# for a first edit (load, paint, press Edit); 30 a minute refused a user's second edit. (It can also fall into a loop
# of hundreds; see diffusion/app/edit.py: the runs no longer wait on those uploads.)
UPLOADS_PER_MINUTE = 150
MAX_UPLOAD_BYTES = 200 * 1024**2
UPLOAD_BYTES_PER_MINUTE = MAX_UPLOAD_BYTES // 5  # 40 MB: eight 5-MB pictures a minute, a fifth of what is kept
MAX_BODY = 1024**2  # a queue/join body is a few KB (the inputs); larger ones are refused unread
MAX_JOIN_BODY = MAX_BODY  # the name tests and older notes use
MAX_BODY_DEPTH = 64  # the inputs nest a few levels (the image editor's value: 4)
MAX_ADDRESSES = 10_000  # the per-address upload table's bound (entries also expire a minute after their last use)
UPLOAD_GRACE_SECONDS = 60  # an upload younger than this may still be about to be read by its request
WINDOW_SECONDS = 60  # the upload rate's window
_PREFIX = r"/gradio_api/"
JOIN = re.compile(_PREFIX + r"(queue/join|call/(v2/)?[^/]+)/?$")  # queue a job
UPLOAD = re.compile(_PREFIX + r"upload/?$")


def pending_jobs(queue, session_hash: str | None = None, address: str | None = None) -> int:
    """Events waiting in Gradio's queue or being processed, of this session or from this client address."""
    def ours(event) -> bool:
        if session_hash is not None:
            return event.session_hash == session_hash
        client = getattr(getattr(event, "request", None), "client", None)
        return client is not None and client.host == address

    waiting = sum(ours(event) for event_queue in queue.event_queue_per_concurrency_id.values()
                  for event in event_queue.queue)
    running = sum(ours(event) for job in queue.active_jobs if job for event in job)
    return waiting + running


def prune_uploads(files: set, max_bytes: int, grace_seconds: float = UPLOAD_GRACE_SECONDS) -> int:
    """Delete the oldest uploads (past the grace period) until those kept fit max_bytes; the bytes kept."""
    present = []
    for name in list(files):
        try:
            info = os.stat(name)
        except OSError:
            files.discard(name)
            continue
        present.append((info.st_mtime, info.st_size, name))
    present.sort(reverse=True)  # newest first
    kept, now = 0, time.time()
    for mtime, size, name in present:
        if kept + size > max_bytes and now - mtime > grace_seconds:
            try:
                os.unlink(name)
                Path(name).parent.rmdir()  # Gradio keeps each upload in a folder of its own
            except OSError:
                pass
            files.discard(name)
        else:
            kept += size
    return kept


class RequestGuard:
    """ASGI middleware: `blocks` is the app's gr.Blocks (its queue and its set of uploaded files)."""

    def __init__(self, app, blocks, max_pending: int = MAX_PENDING_PER_SESSION,
                 max_pending_per_address: int = MAX_PENDING_PER_ADDRESS, uploads_per_minute: int = UPLOADS_PER_MINUTE,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, upload_grace_seconds: float = UPLOAD_GRACE_SECONDS,
                 upload_bytes_per_minute: int | None = None, max_addresses: int = MAX_ADDRESSES,
                 max_body: int = MAX_BODY):
        self.app, self.blocks = app, blocks
        self.max_pending, self.max_pending_per_address = max_pending, max_pending_per_address
        self.uploads_per_minute, self.max_upload_bytes = uploads_per_minute, max_upload_bytes
        self.upload_bytes_per_minute = max_upload_bytes // 5 if upload_bytes_per_minute is None else upload_bytes_per_minute
        self.upload_grace_seconds, self.max_addresses, self.max_body = upload_grace_seconds, max_addresses, max_body
        # client address -> (time, bytes) of its uploads in the last minute; least recently used first
        self.uploads: OrderedDict[str, deque] = OrderedDict()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path, address = scope["path"], (scope.get("client") or ("?", 0))[0]
        if UPLOAD.search(path):
            refusal = self._upload_refusal(address, _declared_length(scope))
            if refusal:
                return await _refuse(send, refusal)
            return await self.app(scope, receive, send)
        body = await _read_body(receive, self.max_body)
        if body is None:
            return await _refuse(send, f"the request body is larger than {self.max_body / 1024**2:g} MB; "
                                       f"send files through /gradio_api/upload", status=413)
        if JOIN.search(path):
            status, refusal = self._join_refusal(body, address)
            if refusal:
                return await _refuse(send, refusal, status=status)
        return await self.app(scope, _replay(body, receive), send)

    def _join_refusal(self, body: bytes, address: str) -> tuple[int, str]:
        try:
            payload = load_json(body, "the request body", max_depth=MAX_BODY_DEPTH)
        except ValueError as error:  # too deep, not JSON, not UTF-8
            return 400, f"{error}; send a JSON object such as {{\"data\": [...]}}"
        if not isinstance(payload, dict):
            return 400, f"the request body must be a JSON object, not {type(payload).__name__}"
        queue = getattr(self.blocks, "_queue", None)
        if queue is None:
            return 200, ""
        session = payload.get("session_hash")
        if isinstance(session, str):
            pending = pending_jobs(queue, session_hash=session)
            if pending >= self.max_pending:
                return 429, (f"you already have {pending} requests waiting or running; at most {self.max_pending} "
                             f"per session. Wait for one to finish, or stop one.")
        pending = pending_jobs(queue, address=address)
        if pending >= self.max_pending_per_address:
            return 429, (f"your address already has {pending} requests waiting or running; at most "
                         f"{self.max_pending_per_address} per address. Wait for one to finish, or stop one.")
        return 200, ""

    def _recent_uploads(self, address: str, now: float) -> deque:
        """This address's uploads of the last minute; expired addresses leave the table, which stays bounded."""
        while self.uploads:
            oldest, times = next(iter(self.uploads.items()))
            if len(self.uploads) < self.max_addresses and times and now - times[-1][0] <= WINDOW_SECONDS:
                break
            del self.uploads[oldest]  # quiet for a minute, or the table is full (least recently used goes)
        recent = self.uploads.pop(address, None) or deque()
        while recent and now - recent[0][0] > WINDOW_SECONDS:
            recent.popleft()
        self.uploads[address] = recent  # most recently used last
        return recent

    def _upload_refusal(self, address: str, size: int) -> str:
        now = time.monotonic()
        recent = self._recent_uploads(address, now)
        if len(recent) >= self.uploads_per_minute:
            return f"at most {self.uploads_per_minute} uploads a minute from one address; try again in a minute"
        sent = sum(n for _, n in recent)
        if sent + size > self.upload_bytes_per_minute:
            return (f"at most {self.upload_bytes_per_minute / 1024**2:g} MB of uploads a minute from one address "
                    f"(this one sent {sent / 1024**2:.1f} MB); try again in a minute")
        recent.append((now, size))
        kept = prune_uploads(self.blocks.upload_file_set, self.max_upload_bytes, self.upload_grace_seconds)
        if kept > self.max_upload_bytes:
            return "the server holds as many recent uploads as it keeps; try again in a minute"
        return ""


def _declared_length(scope) -> int:
    """An upload's Content-Length; one without (chunked) counts as the largest file a request may carry."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                break
    return 5 * 1024**2


async def _read_body(receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _replay(body: bytes, receive):
    """The body read once, then the client's own messages (its disconnect)."""
    sent = False

    async def replayed():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed


async def _refuse(send, sentence: str, status: int = 429):
    payload = json.dumps({"detail": sentence}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


# The handlers a page may run outside the queue (queue=False, so reachable on Gradio's direct routes): instant, no
# sampling. A new queue=False handler must be added here on purpose (app.py refuses to build otherwise).
INSTANT_HANDLERS = frozenset({"random_seed", "sampler_controls", "estimate", "count_run", "interval_note_text",
                              "stopped", "failed"})


def instant_handlers_problems(demo) -> list[str]:
    """Every event served outside the queue that is not one of INSTANT_HANDLERS, or that joins the sampling
    concurrency group, or streams (a generator would stop at its first yield there): one line each."""
    import functools
    import inspect

    problems = []
    for block_fn in (demo.fns.values() if isinstance(demo.fns, dict) else demo.fns):
        if block_fn.queue or block_fn.fn is None:  # queued, or a front-end-only event
            continue
        function = block_fn.fn
        while isinstance(function, functools.partial):
            function = function.func
        name = getattr(function, "__name__", repr(function))
        if name not in INSTANT_HANDLERS or block_fn.concurrency_id == "sampling" \
                or inspect.isgeneratorfunction(function):
            problems.append(f"{name} runs outside the queue but is not an instant handler")
    return problems
