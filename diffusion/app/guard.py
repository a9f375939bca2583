"""What one client may ask of the server, checked in front of Gradio's routes (an ASGI middleware):

- at most MAX_PENDING_PER_SESSION jobs waiting or running per browser session (Gradio's session hash), so one
  client cannot fill the shared queue and lock everyone else out;
- uploads: at most UPLOADS_PER_MINUTE per client address, and at most MAX_UPLOAD_BYTES of uploads kept on disk (the
  oldest are deleted first; Gradio's delete_cache removes any older than an hour).

A refusal is HTTP 429 with a sentence as its detail. The queue is read, never changed: the middleware counts the
events Gradio holds for the session.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict, deque
from pathlib import Path

MAX_PENDING_PER_SESSION = 4  # a Generate, its live-mode follow-ups and a study in another tab
# The Edit tab's image editor uploads its background, paint layer and composite whenever they change: 30-50 files
# for a first edit (load, paint, press Edit); 30 a minute refused a user's second edit. (It can also fall into a loop
# of hundreds; see diffusion/app/edit.py: the runs no longer wait on those uploads.)
UPLOADS_PER_MINUTE = 150
MAX_UPLOAD_BYTES = 200 * 1024**2
MAX_JOIN_BODY = 1024**2  # a queue/join body is a few KB (the inputs); larger ones are refused unread
UPLOAD_GRACE_SECONDS = 60  # an upload younger than this may still be about to be read by its request


def pending_jobs(queue, session_hash: str) -> int:
    """Events of this session waiting in Gradio's queue or being processed."""
    waiting = sum(event.session_hash == session_hash
                  for event_queue in queue.event_queue_per_concurrency_id.values() for event in event_queue.queue)
    running = sum(event.session_hash == session_hash for job in queue.active_jobs if job for event in job)
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

    def __init__(self, app, blocks, max_pending: int = MAX_PENDING_PER_SESSION, uploads_per_minute: int = UPLOADS_PER_MINUTE,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, upload_grace_seconds: float = UPLOAD_GRACE_SECONDS):
        self.app, self.blocks = app, blocks
        self.max_pending, self.uploads_per_minute, self.max_upload_bytes = max_pending, uploads_per_minute, max_upload_bytes
        self.upload_grace_seconds = upload_grace_seconds
        self.uploads: dict[str, deque] = defaultdict(deque)  # client address -> times of its recent uploads

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path.endswith("/queue/join"):
            body = await _read_body(receive, MAX_JOIN_BODY)
            refusal = "the request is too large" if body is None else self._join_refusal(body)
            if refusal:
                return await _refuse(send, refusal)
            return await self.app(scope, _replay(body, receive), send)
        if path.endswith("/upload"):
            refusal = self._upload_refusal((scope.get("client") or ("?", 0))[0])
            if refusal:
                return await _refuse(send, refusal)
        return await self.app(scope, receive, send)

    def _join_refusal(self, body: bytes) -> str:
        try:
            session = json.loads(body).get("session_hash")
        except (ValueError, AttributeError):
            return ""  # not ours to judge: Gradio answers a malformed body itself
        queue = getattr(self.blocks, "_queue", None)
        if not isinstance(session, str) or queue is None:
            return ""
        pending = pending_jobs(queue, session)
        if pending >= self.max_pending:
            return (f"you already have {pending} requests waiting or running; at most {self.max_pending} per session. "
                    f"Wait for one to finish, or stop one.")
        return ""

    def _upload_refusal(self, client: str) -> str:
        now, recent = time.monotonic(), self.uploads[client]
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= self.uploads_per_minute:
            return f"at most {self.uploads_per_minute} uploads a minute from one address; try again in a minute"
        recent.append(now)
        kept = prune_uploads(self.blocks.upload_file_set, self.max_upload_bytes, self.upload_grace_seconds)
        if kept > self.max_upload_bytes:
            return "the server holds as many recent uploads as it keeps; try again in a minute"
        return ""


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


async def _refuse(send, sentence: str):
    payload = json.dumps({"detail": sentence}).encode()
    await send({"type": "http.response.start", "status": 429,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
