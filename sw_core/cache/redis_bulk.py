"""GET big Redis strings straight into a caller's buffer, without intermediate copies.

redis-py (with hiredis) reads a 4 MiB reply in 64 KiB pieces into the parser's buffer,
builds a new ``bytes`` object, and the caller then copies that into its own buffer: three
copies and a fresh 4 MiB allocation per value. :class:`BulkReader` sends ``GET`` on one
pooled connection and ``recv_into``\\ s the payload where it belongs: the kernel's copy is
the only one. It speaks just the replies ``GET`` can produce (bulk string, nil, error) in
RESP2 and RESP3; on anything unexpected, or any socket error, the connection is closed
before it goes back to the pool, so no half-read reply is ever taken for another's answer.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from types import TracebackType

import redis
from redis.exceptions import InvalidResponse

#: A reply header (``$<length>\r\n``, ``-ERR ...``) longer than this is not one of GET's.
_MAX_HEADER_BYTES = 512
_DISCARD_BYTES = 1 << 20


class BulkReader:
    """One pooled connection used for a series of :meth:`get_into` calls.

    Example:
        >>> with BulkReader(client) as reader:  # doctest: +SKIP
        ...     n = reader.get_into("key", memoryview(buffer))
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._conn: redis.connection.Connection | None = None  # as get_connection types it
        self._broken = False

    def __enter__(self) -> BulkReader:
        try:
            self._conn = self._pool.get_connection()
        except TypeError:  # redis-py < 5.3 wants a command name
            self._conn = self._pool.get_connection("GET")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._broken or (exc is not None and not isinstance(exc, redis.ResponseError)):
            conn.disconnect()
        self._pool.release(conn)

    def get_into(
        self,
        key: str,
        out: memoryview,
        *,
        feed: Callable[[memoryview], None] | None = None,
        feed_bytes: int = 64 << 10,
    ) -> int | None:
        """Read the string at ``key`` into ``out``; its length, or None when the key is missing.

        A value longer than ``out`` is read and discarded: the returned length then exceeds
        ``len(out)`` and ``out`` holds nothing useful. ``feed`` receives the filled part of
        ``out`` in order, in slices of about ``feed_bytes``, while the rest still arrives.
        """
        conn = self._conn
        if conn is None:
            raise RuntimeError("BulkReader.get_into outside its 'with' block")
        try:
            conn.send_command("GET", key)
            sock = getattr(conn, "_sock", None)
            if not isinstance(sock, socket.socket):
                return self._fallback(conn, out, feed)
            return self._receive(sock, out, feed, feed_bytes)
        except redis.ResponseError:
            raise
        except TimeoutError as exc:
            self._broken = True
            raise redis.TimeoutError(f"timed out reading {key!r}: {exc}") from exc
        except OSError as exc:
            self._broken = True
            raise redis.ConnectionError(f"connection lost reading {key!r}: {exc}") from exc
        except BaseException:
            self._broken = True
            raise

    def _receive(
        self,
        sock: socket.socket,
        out: memoryview,
        feed: Callable[[memoryview], None] | None,
        feed_bytes: int,
    ) -> int | None:
        head = bytearray()
        while (end := head.find(b"\r\n")) < 0:
            if len(head) > _MAX_HEADER_BYTES:
                raise InvalidResponse(f"not a GET reply: {bytes(head[:64])!r}")
            piece = sock.recv(1)
            if not piece:
                raise ConnectionError("Redis closed the connection")
            head += piece
        line, rest = bytes(head[:end]), memoryview(head)[end + 2 :]
        if line[:1] == b"-":
            if rest:
                raise InvalidResponse("bytes after an error reply")
            raise redis.ResponseError(line[1:].decode(errors="replace"))
        if line in (b"$-1", b"_"):
            if rest:
                raise InvalidResponse("bytes after a nil reply")
            return None
        if line[:1] != b"$":
            raise InvalidResponse(f"not a GET reply: {line[:64]!r}")
        size = int(line[1:])
        if len(rest) > size + 2:
            raise InvalidResponse("more bytes than the reply announced")
        if size > len(out):
            self._discard(sock, size + 2 - len(rest))
            return size
        taken = min(len(rest), size)
        out[:taken] = rest[:taken]
        trailer = len(rest) - taken
        got, fed = taken, 0
        while got < size:
            received = sock.recv_into(out[got:size])
            if not received:
                raise ConnectionError("Redis closed the connection")
            got += received
            if feed is not None and got - fed >= feed_bytes:
                feed(out[fed:got])
                fed = got
        if feed is not None and fed < size:
            feed(out[fed:size])
        if trailer < 2:
            self._discard(sock, 2 - trailer)
        return size

    @staticmethod
    def _discard(sock: socket.socket, n_bytes: int) -> None:
        scratch = memoryview(bytearray(min(n_bytes, _DISCARD_BYTES)))
        while n_bytes > 0:
            received = sock.recv_into(scratch[: min(n_bytes, len(scratch))])
            if not received:
                raise ConnectionError("Redis closed the connection")
            n_bytes -= received

    @staticmethod
    def _fallback(
        conn: redis.connection.AbstractConnection,
        out: memoryview,
        feed: Callable[[memoryview], None] | None,
    ) -> int | None:
        """Connections without a plain socket: let redis-py parse, then copy."""
        value = conn.read_response()
        if value is None:
            return None
        if len(value) <= len(out):
            out[: len(value)] = value
            if feed is not None:
                feed(out[: len(value)])
        return len(value)


def delete_quietly(client: redis.Redis, keys: list[str]) -> None:
    """DEL ``keys``, ignoring Redis errors (for keys that also expire on their own)."""
    try:
        client.delete(*keys)
    except redis.RedisError:
        pass
