"""GET big Redis strings straight into a caller's buffer, without intermediate copies.

redis-py (with hiredis) reads a 4 MiB reply in 64 KiB pieces into the parser's buffer,
builds a new ``bytes`` object, and the caller then copies that into its own buffer: three
copies and a fresh 4 MiB allocation per value. :class:`BulkReader` sends ``GET`` on one
pooled connection and ``recv_into``\\ s the payload where it belongs: the kernel's copy is
the only one. It speaks just the replies ``GET`` can produce (bulk string, nil, error) in
RESP2 and RESP3; on anything unexpected, or any socket error, the connection is closed
before it goes back to the pool, so no half-read reply is ever taken for another's answer.

:meth:`BulkReader.script_then_get_into` sends a Lua call and a ``GET`` together: the cache's
lookup script and the first part of the chunk it looks up cost one round trip, not two.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

import redis
from redis.exceptions import InvalidResponse

#: A reply line (``$<length>\r\n``, ``-ERR ...``) longer than this is not one we read.
_MAX_HEADER_BYTES = 512
#: What one read of reply lines asks the socket for (the bytes after the line are kept).
_LINE_READ_BYTES = 512
#: The most elements, and the longest string element, of a script reply read here.
_MAX_ARRAY_ITEMS = 16
_MAX_ITEM_BYTES = 64
_DISCARD_BYTES = 1 << 20

#: A script's reply as :meth:`BulkReader.script_then_get_into` reads it.
ScriptReply = list[int | bytes]


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
        #: Bytes received after the last reply line read, not consumed yet.
        self._pending = bytearray()

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
        unread = bool(self._pending)  # bytes of a reply nobody read: never reuse it
        if self._broken or unread or (exc is not None and not isinstance(exc, redis.ResponseError)):
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
        return self._guarded(key, lambda: self._get(conn, ("GET", key), out, feed, feed_bytes))

    def script_then_get_into(
        self,
        script_sha: str,
        keys: Sequence[str],
        args: Sequence[Any],
        key: str,
        out: memoryview,
        *,
        feed: Callable[[memoryview], None] | None = None,
        feed_bytes: int = 64 << 10,
    ) -> tuple[ScriptReply, int | None]:
        """``EVALSHA script_sha`` and then ``GET key``, sent together: the script's reply (a
        flat array of integers and short strings) and what :meth:`get_into` gives for ``key``.

        Redis runs the two back to back; what the script did is seen by the ``GET``.

        Raises:
            redis.ResponseError: the script failed (``NOSCRIPT`` ...), raised once the
                ``GET``'s reply was read too (the connection stays usable).
        """
        conn = self._conn
        if conn is None:
            raise RuntimeError("BulkReader.script_then_get_into outside its 'with' block")
        call = ("EVALSHA", script_sha, len(keys), *keys, *args)

        def both() -> tuple[ScriptReply | redis.ResponseError, int | None]:
            conn.send_packed_command(conn.pack_commands([call, ("GET", key)]))
            sock = getattr(conn, "_sock", None)
            if not isinstance(sock, socket.socket):
                try:
                    reply: ScriptReply | redis.ResponseError = list(conn.read_response())
                except redis.ResponseError as exc:
                    reply = exc
                return reply, self._fallback(conn, out, feed)
            reply = self._script_reply(sock)
            return reply, self._receive(sock, out, feed, feed_bytes)

        reply, got = self._guarded(key, both)
        if isinstance(reply, redis.ResponseError):
            raise reply
        return reply, got

    def _get(
        self,
        conn: redis.connection.AbstractConnection,
        command: tuple[str, str],
        out: memoryview,
        feed: Callable[[memoryview], None] | None,
        feed_bytes: int,
    ) -> int | None:
        conn.send_command(*command)
        sock = getattr(conn, "_sock", None)
        if not isinstance(sock, socket.socket):
            return self._fallback(conn, out, feed)
        return self._receive(sock, out, feed, feed_bytes)

    def _guarded(self, key: str, read: Callable[[], Any]) -> Any:
        """``read()``, marking the connection broken on anything but a Redis error reply."""
        try:
            return read()
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

    def _line(self, sock: socket.socket) -> bytes:
        """The next reply line (without its CRLF); what was received after it stays pending."""
        buf = self._pending
        while (end := buf.find(b"\r\n")) < 0:
            if len(buf) > _MAX_HEADER_BYTES:
                raise InvalidResponse(f"not a reply line: {bytes(buf[:64])!r}")
            piece = sock.recv(_LINE_READ_BYTES)
            if not piece:
                raise ConnectionError("Redis closed the connection")
            buf += piece
        line = bytes(buf[:end])
        del buf[: end + 2]
        return line

    def _script_reply(self, sock: socket.socket) -> ScriptReply | redis.ResponseError:
        """A script's reply: a flat array of integers and short strings, or its error."""
        line = self._line(sock)
        if line[:1] == b"-":
            message = line[1:].decode(errors="replace")
            if message.startswith("NOSCRIPT"):  # as redis-py's parsers raise it
                return redis.exceptions.NoScriptError(message)
            return redis.ResponseError(message)
        if line[:1] != b"*" or not 0 <= _number(line) <= _MAX_ARRAY_ITEMS:
            raise InvalidResponse(f"not a flat script reply: {line[:64]!r}")
        items: ScriptReply = []
        for _ in range(_number(line)):
            item = self._line(sock)
            if item[:1] == b":":
                items.append(_number(item))
            elif item[:1] == b"$" and 0 <= _number(item) <= _MAX_ITEM_BYTES:
                value = self._line(sock)
                if len(value) != _number(item):
                    raise InvalidResponse("a string element of the wrong length")
                items.append(value)
            else:
                raise InvalidResponse(f"not a flat script reply element: {item[:64]!r}")
        return items

    def _receive(
        self,
        sock: socket.socket,
        out: memoryview,
        feed: Callable[[memoryview], None] | None,
        feed_bytes: int,
    ) -> int | None:
        line = self._line(sock)
        rest = bytes(self._pending)  # what came with the line: the start of the value
        self._pending.clear()
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
        size = _number(line)
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


def _number(line: bytes) -> int:
    """The integer after a reply line's type byte (``$5``, ``*4``, ``:12``)."""
    try:
        return int(line[1:])
    except ValueError:
        raise InvalidResponse(f"not a number in a reply line: {line[:64]!r}") from None


def delete_quietly(client: redis.Redis, keys: list[str]) -> None:
    """DEL ``keys``, ignoring Redis errors (for keys that also expire on their own)."""
    try:
        client.delete(*keys)
    except redis.RedisError:
        pass
