"""The rule for every network read: a total deadline per request, and streamed, size-capped bodies.

requests alone leaves three holes that a hostile or broken server can use:
- `timeout=(connect, read)` bounds each socket read, so a server that sends a byte every few
  seconds (in the headers or the body) holds a request for as long as it likes;
- `Response.content` reads and inflates the whole body before anyone can look at its size (a
  1 MB gzip body can inflate to gigabytes);
- redirects are followed silently, and the body of every redirect response is read in full.

`get` closes them: it runs one request under a `Deadline` (connect, headers, redirects and body
together), follows at most MAX_REDIRECTS redirects itself (never reading their bodies, warning
once when one leads to another host), and reads the body in chunks, inflating gzip/deflate
itself, refusing it as soon as it passes `max_bytes` on the wire or after decompression.

The deadline is enforced by one watchdog thread: when a request's time is up it shuts down the
request's socket, which wakes the blocked read at once. Sockets are known because `make_session`
installs connection classes that register themselves with the calling thread's deadline when a
request starts. (Sessions made elsewhere still get the size caps, and the deadline between reads.)
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from pipeline.core.errors import warn

MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024
_REDIRECT_STATUSES = {301, 302, 303, 307, 308}


class DeadlineExceeded(Exception):
    """The request as a whole took longer than its deadline."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no complete answer within {seconds:g} s")
        self.seconds = seconds


class BodyRefused(Exception):
    """A response body that must not be used. `retry`: whether fetching it again may help."""

    def __init__(self, reason: str, *, retry: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


# --------------------------------------------------------------------------- deadlines
_local = threading.local()


def _shut(conn: Any) -> None:
    """Wake whoever is blocked reading `conn`: shut its socket down (both directions).

    socket.socket.shutdown is called directly so that a TLS socket is cut at the TCP level
    rather than by SSLSocket.shutdown, which also tears down its SSL state under the reader.
    """
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Deadline:
    """One request's time limit; the watchdog calls `expire` when it is up."""

    __slots__ = ("_connections", "_done", "_expired", "_lock", "at", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._connections: list[Any] = []
        self._expired = False
        self._done = False

    @property
    def expired(self) -> bool:
        return self._expired

    @property
    def done(self) -> bool:
        return self._done

    def attach(self, conn: Any) -> None:
        """A connection starts a request under this deadline."""
        with self._lock:
            if self._done:
                return
            self._connections.append(conn)
            if self._expired:
                _shut(conn)

    def expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._expired = True
            for conn in self._connections:
                _shut(conn)

    def finish(self) -> None:
        """The request is over: its connections go back to the pool untouched from now on."""
        with self._lock:
            self._done = True
            self._connections.clear()


class _Watchdog:
    """One daemon thread that expires deadlines on time (a heap ordered by expiry)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Deadline]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def watch(self, deadline: Deadline) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()  # a forked child has the lock but not the thread
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            if len(self._heap) > 1024:  # finished deadlines wait for their time; drop them in bulk
                self._heap = [e for e in self._heap if not e[2].done]
                heapq.heapify(self._heap)
            heapq.heappush(self._heap, (deadline.at, next(self._seq), deadline))
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    _, _, deadline = heapq.heappop(self._heap)
                    deadline.expire()  # no-op when done
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


_WATCHDOG = _Watchdog()


@contextmanager
def deadline(seconds: float) -> Iterator[Deadline]:
    """Every request this thread makes in the block (through a `make_session` session) is cut
    off `seconds` after the block starts."""
    current = Deadline(seconds)
    previous = getattr(_local, "deadline", None)
    _local.deadline = current
    _WATCHDOG.watch(current)
    try:
        yield current
    finally:
        current.finish()
        _local.deadline = previous


class _DeadlineConnection:
    """Mixin for urllib3 connections: register with the calling thread's deadline."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        current = getattr(_local, "deadline", None)
        if current is not None:
            current.attach(self)
        super().request(*args, **kwargs)  # type: ignore[misc]

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        current = getattr(_local, "deadline", None)
        if current is not None and current.expired:  # expired while connecting: no socket then
            _shut(self)


class _HTTPConnection(_DeadlineConnection, HTTPConnection):
    pass


class _HTTPSConnection(_DeadlineConnection, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


_POOLS = {"http": _HTTPPool, "https": _HTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    """HTTPAdapter whose pools make deadline-aware connections."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **kwargs)
        # HTTP(S) proxies use urllib3's standard pools; SOCKS proxies have their own (left alone).
        if manager.pool_classes_by_scheme == urllib3.poolmanager.pool_classes_by_scheme:
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def make_session(user_agent: str, pool_size: int, url: str | None = None, *,
                 accept: str = "*/*") -> requests.Session:
    """One pooled session (connection reuse; no urllib3-level retries) whose requests honour
    `deadline`. Only gzip and deflate are accepted as content encodings: `read_body` inflates
    those itself, within its size cap.

    Proxy and CA-bundle settings are read from the environment once, here, instead of on every
    request (requests does that when trust_env is on: about 1 ms of CPU per tile).
    """
    session = requests.Session()
    adapter = _DeadlineAdapter(pool_connections=max(4, pool_size), pool_maxsize=max(4, pool_size),
                               max_retries=0, pool_block=False)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers.update({"User-Agent": user_agent, "Accept": accept, "Accept-Encoding": "gzip, deflate"})
    session.max_redirects = MAX_REDIRECTS
    if url is not None:
        session.proxies.update(requests.utils.get_environ_proxies(url))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
        session.trust_env = False
    return session


# --------------------------------------------------------------------------- redirects
_warned_hosts: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def host_of(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _note_redirect(origin: str, target: str) -> None:
    """Warn, once per pair of hosts, when a redirect leads to another host."""
    pair = (host_of(origin), host_of(target))
    if pair[0] == pair[1]:
        return
    with _warned_lock:
        if pair in _warned_hosts:
            return
        _warned_hosts.add(pair)
    warn(f"{origin} redirected to {target}, on another host ({pair[1]}); following it (its answers "
         f"are checked like any other; further redirects from {pair[0]} to {pair[1]} are not reported)")


def _open(session: requests.Session, url: str, timeout: tuple[float, float],
          headers: dict[str, str] | None) -> requests.Response:
    """GET `url` (headers only, body unread), following redirects by hand."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        resp = session.get(current, timeout=timeout, stream=True, allow_redirects=False, headers=headers)
        location = resp.headers.get("Location")
        if resp.status_code not in _REDIRECT_STATUSES or not location:
            return resp
        resp.close()  # a redirect's body is never read
        target = urljoin(current, location)
        if urlsplit(target).scheme not in ("http", "https"):
            raise requests.exceptions.InvalidSchema(f"{current} redirected to {target}, which is not "
                                                    f"an http(s) URL")
        _note_redirect(current, target)
        current = target
    raise requests.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects from {url}")


# --------------------------------------------------------------------------- bodies
class _Inflater:
    """Inflates a gzip or deflate body incrementally, never producing more than it is asked for."""

    def __init__(self, content_encoding: str) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1:
            raise BodyRefused(f"stacked Content-Encoding '{content_encoding}' is not supported")
        self.coding = codings[0] if codings else ""
        self._d: Any = None
        if self.coding in ("gzip", "x-gzip"):
            self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self.coding not in ("", "deflate"):
            raise BodyRefused(f"Content-Encoding '{self.coding}' is not supported (only gzip and deflate "
                              f"were asked for)")

    def feed(self, data: bytes, room: int) -> bytes:
        """Inflate `data`; returns at most room + 1 bytes (more than `room` means too large)."""
        if not self.coding:
            return data
        if self._d is None:  # deflate: zlib-wrapped as the standard says, or raw as some servers send
            zlib_header = len(data) >= 2 and data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._d = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        try:
            return self._d.decompress(data, room + 1)
        except zlib.error as exc:
            raise BodyRefused(f"corrupt {self.coding} body ({exc})", retry=True) from None

    def finish(self) -> None:
        if self.coding == "gzip" and self._d is not None and not self._d.eof:
            raise BodyRefused("truncated gzip body", retry=True)


def read_body(resp: requests.Response, max_bytes: int) -> bytes:
    """The body of a streamed response, refused (BodyRefused) once it passes `max_bytes` on the
    wire or after decompression: memory never holds much more than `max_bytes`."""
    declared = resp.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise BodyRefused(f"response of {int(declared)} bytes refused (limit {max_bytes})")
    inflater = _Inflater(resp.headers.get("Content-Encoding", ""))
    body = bytearray()
    wire = 0
    while True:
        chunk = _read_chunk(resp)
        if not chunk:
            break
        wire += len(chunk)
        if wire > max_bytes:
            raise BodyRefused(f"response larger than {max_bytes} bytes refused")
        body += inflater.feed(chunk, max_bytes - len(body))
        if len(body) > max_bytes:
            raise BodyRefused(f"response larger than {max_bytes} bytes after decompression "
                              f"({inflater.coding}) refused")
    inflater.finish()
    return bytes(body)


def _read_chunk(resp: requests.Response) -> bytes:
    """Raw bytes as sent (transfer-decoded, not content-decoded), urllib3's errors as requests'."""
    try:
        return resp.raw.read(CHUNK_BYTES, decode_content=False)
    except urllib3.exceptions.ReadTimeoutError as exc:
        raise requests.ReadTimeout(exc) from None
    except urllib3.exceptions.ProtocolError as exc:  # truncated body, reset connection
        raise requests.exceptions.ChunkedEncodingError(exc) from None
    except urllib3.exceptions.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise requests.ConnectionError(exc) from None


def get(session: requests.Session, url: str, *, timeout: tuple[float, float], deadline_s: float,
        max_bytes: int, headers: dict[str, str] | None = None) -> tuple[requests.Response, bytes]:
    """GET `url` and read its body within `deadline_s` seconds and `max_bytes` bytes.

    Returns the (closed) final response and its body. Raises DeadlineExceeded, BodyRefused, or
    requests' exceptions (connection errors, timeouts of a single read, too many redirects).
    """
    with deadline(deadline_s) as limit:
        try:
            resp = _open(session, url, timeout, headers)
            try:
                body = read_body(resp, max_bytes)
            finally:
                resp.close()
        except (requests.RequestException, OSError, BodyRefused):
            if limit.expired:  # the watchdog cut the connection: that is what went wrong
                raise DeadlineExceeded(deadline_s) from None
            raise
        if limit.expired or time.monotonic() > limit.at:
            # A body read up to a cut connection may look complete (no Content-Length): never trust it.
            raise DeadlineExceeded(deadline_s)
    return resp, body
