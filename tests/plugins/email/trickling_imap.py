"""An IMAP server on loopback that logs in, selects and searches like any other, then answers FETCH one byte
every few seconds: the slow server that a real Dovecot cannot be made into. For shutdown tests."""
from __future__ import annotations

import socket
import threading

CAPS = b"IMAP4rev1 IDLE UIDPLUS MOVE"


class TricklingImap:
    def __init__(self, every: float = 2.0):
        self.every = every
        self.fetching = threading.Event()  # set once a FETCH is being answered
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self._sock.close()
        for conn in self._conns:
            conn.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            conn.sendall(b"* OK [CAPABILITY " + CAPS + b"] ready\r\n")
            while not self._stop.is_set():
                line = reader.readline()
                if not line:
                    return
                tag, _, rest = line.rstrip(b"\r\n").partition(b" ")
                words = rest.upper().split(b" ")
                command = b" ".join(words[:2]) if words[0] == b"UID" else words[0]
                if command == b"CAPABILITY":
                    conn.sendall(b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK done\r\n")
                elif command == b"LOGIN":
                    conn.sendall(tag + b" OK [CAPABILITY " + CAPS + b"] logged in\r\n")
                elif command in (b"SELECT", b"EXAMINE"):
                    conn.sendall(b"* FLAGS (\\Seen)\r\n* 3 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 42] ok\r\n"
                                 b"* OK [UIDNEXT 4] ok\r\n" + tag + b" OK [READ-WRITE] selected\r\n")
                elif command == b"UID SEARCH":
                    conn.sendall(b"* SEARCH 1 2 3\r\n" + tag + b" OK search done\r\n")
                elif command == b"UID FETCH":
                    self.fetching.set()
                    for byte in b"* 1 FETCH (UID 1 RFC822.SIZE 10)\r\n" * 1000:
                        if self._stop.wait(self.every):
                            return
                        conn.sendall(bytes([byte]))
                elif command == b"LOGOUT":
                    conn.sendall(b"* BYE bye\r\n" + tag + b" OK bye\r\n")
                    return
                else:
                    conn.sendall(tag + b" OK\r\n")
        except OSError:
            return
        finally:
            conn.close()
