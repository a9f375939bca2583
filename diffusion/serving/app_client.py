"""Clients of a running app: `local_client` (gradio_client, for tests and the load test) and `QueueClient`, a
minimal client of the queue that reads the event stream as a browser does, for timing round trips.

gradio_client polls its received messages every 50 ms (`time.sleep(0.05)` in its `stream_sse_v1plus`), so a call
through it takes about 70 ms more than the server needs, even for a handler that does nothing; a browser's
EventSource sees each message as it arrives. This client joins the queue (POST queue/join), reads queue/data until
its event completes, and keeps one HTTP connection and one session, as a browser tab does (Gradio builds a new
session's state from the whole app's configuration: about 50 ms for this app, once per tab, not per call).
"""

from __future__ import annotations

import json
import uuid

import httpx


class QueueError(RuntimeError):
    """The app answered the call with an error."""


class QueueClient:
    """Calls to one named endpoint of the app at `url`; arguments not given take the endpoint's API defaults."""

    def __init__(self, url: str, api_name: str, timeout: float = 120.0):
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        config = self.http.get("/config").json()
        self.prefix = "/" + config.get("api_prefix", "/gradio_api").strip("/")
        self.fn_index = next(d.get("id", i) for i, d in enumerate(config["dependencies"])
                             if d.get("api_name") == api_name)
        info = self.http.get(f"{self.prefix}/info").json()
        self.parameters = info["named_endpoints"]["/" + api_name]["parameters"]
        self.session = uuid.uuid4().hex

    def predict(self, *args) -> list:
        """The endpoint's outputs (file outputs as FileData dicts, not downloaded)."""
        data = list(args) + [p["parameter_default"] for p in self.parameters[len(args):]]
        session = self.session
        joined = self.http.post(f"{self.prefix}/queue/join",
                                json={"data": data, "fn_index": self.fn_index, "session_hash": session})
        joined.raise_for_status()
        event_id = joined.json()["event_id"]
        with self.http.stream("GET", f"{self.prefix}/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed" and message.get("event_id") == event_id:
                    if not message.get("success"):
                        raise QueueError(str(message.get("output", {}).get("error")))
                    return message["output"]["data"]
        raise QueueError("the event stream ended before the call completed")

    def close(self) -> None:
        self.http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def local_client(url: str, **kwargs):
    """A gradio_client `Client` of the app at `url`. gradio_client opens a new httpx client for each request and for
    each file it downloads, and each one loads the certificate store (~50 ms on these cores) even for a plain-http
    address, where it is never used: a 16-image /generate of the tiny test model took 3.3 s a call with it, 1.3 s
    without. Certificates are still checked on https."""
    from gradio_client import Client

    return Client(url, verbose=False, ssl_verify=not url.startswith("http://"), **kwargs)
