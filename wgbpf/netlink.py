# SPDX-License-Identifier: GPL-2.0-or-later
"""Netlink, the part every family shares: the socket, the message header,
the attribute walker, dumps and acks. routes.py speaks rtnetlink over it
(routes, addresses, links), wireguard.py generic netlink (WireGuard's
devices and peers)."""
import ctypes
import errno
import os
import socket
import struct

NETLINK_ROUTE, NETLINK_GENERIC = 0, 16
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP = 1, 2, 4, 0x300
RT_TABLE_MAIN = 254

HEADER = struct.Struct("=IHHII")  # struct nlmsghdr: length, type, flags, seq, pid
_ATTR = struct.Struct("=HH")      # struct nlattr / rtattr: length, type
_ERRNO = struct.Struct("=i")


def check(buf, off):
    """Raise the error an NLMSG_ERROR message at `off` carries (0: an ack)."""
    err = -_ERRNO.unpack_from(buf, off + HEADER.size)[0]
    if err:
        raise OSError(err, os.strerror(err))


def align(n):
    return (n + 3) & ~3


def attrs(buf, off, end):
    """(type, payload start, payload end) of each netlink attribute in buf[off:end]."""
    while off + 4 <= end:
        length, kind = _ATTR.unpack_from(buf, off)
        if length < 4:
            break
        yield kind & 0x3FFF, off + 4, off + length
        off += align(length)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.c_void_p), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):  # struct mmsghdr: msg_len after the padded msghdr
    _fields_ = [("hdr", _Msghdr), ("len", ctypes.c_uint)]


_libc = ctypes.CDLL(None, use_errno=True)
_MSG_DONTWAIT, _MSG_TRUNC = 0x40, 0x20


class _Slots:
    """recvmmsg(2) into `count` slots of `size` bytes: every datagram queued,
    up to count, in one call (an event is a datagram of its own: one
    recv and its Python around it per event is what a route storm costs)."""

    def __init__(self, count, size):
        self.count, self.size = count, size
        self.buf = bytearray(count * size)
        self.view = memoryview(self.buf)
        base = ctypes.addressof(ctypes.c_char.from_buffer(self.buf))
        self.iov = (_Iovec * count)(*[(base + i * size, size) for i in range(count)])
        self.msgs = (_Mmsghdr * count)()
        for i in range(count):
            self.msgs[i].hdr.iov = ctypes.addressof(self.iov) + i * ctypes.sizeof(_Iovec)
            self.msgs[i].hdr.iovlen = 1

    def read(self, fd):
        n = _libc.recvmmsg(fd, self.msgs, self.count, _MSG_DONTWAIT, None)
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.EINTR):
                return []
            raise OSError(err, os.strerror(err))
        out = []
        for i in range(n):
            m = self.msgs[i]
            if m.hdr.flags & _MSG_TRUNC:  # a datagram larger than a slot: lost as an overrun is
                raise OSError(errno.ENOBUFS, f"netlink datagram of more than {self.size} bytes truncated")
            out.append(bytes(self.view[i * self.size:i * self.size + m.len]))
        return out


def walk(buf):
    """(type, buf, body offset, end) of every message in one read's bytes;
    raises the error of an error reply."""
    off = 0
    while off + HEADER.size <= len(buf):
        length, mtype, _flags, _seq, _pid = HEADER.unpack_from(buf, off)
        if length < HEADER.size:
            break
        if mtype == NLMSG_ERROR:
            check(buf, off)
        yield mtype, buf, off + HEADER.size, off + length
        off += align(length)


SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1


class Netlink:
    """A raw netlink socket (NETLINK_ROUTE unless told): dumps, and events
    when `groups` is set."""

    def __init__(self, groups=0, rcvbuf=32 << 20, protocol=NETLINK_ROUTE):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
        try:
            # SO_RCVBUFFORCE (root) lifts the rmem_max cap: a burst of route
            # events must not overrun us when it can be avoided.
            self.sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((0, groups))
        self.seq = 0
        # one buffer for every read: each event is a datagram of its own, and
        # a fresh 1 MiB allocation per event costs more than parsing it
        self._buf = bytearray(1 << 20)
        self._slots = None  # queued()'s recvmmsg buffers, made on first use

    def join(self, group):
        """Listen to a multicast group by number (NETLINK_ADD_MEMBERSHIP):
        the bind mask reaches groups 1-32 only as bits, and RTNLGRP_NEXTHOP
        (32) is beyond it."""
        self.sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)

    def close(self):
        self.sock.close()

    def fileno(self):
        return self.sock.fileno()

    def discard(self):
        """Throw away everything queued. After an overrun the kernel flags
        ENOBUFS again only once our queue has been emptied, so do this
        before a resync, whose dump covers whatever is thrown away."""
        while True:
            try:
                self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise

    def read(self, block=True):
        """The bytes of one read (a datagram: one event, or a dump's next
        batch of messages); None when nothing is queued and not `block`."""
        try:
            n = self.sock.recv_into(self._buf, 0, 0 if block else socket.MSG_DONTWAIT)
        except BlockingIOError:
            return None
        # bytes of their own: callers may keep them, and slices are one copy
        return bytes(memoryview(self._buf)[:n])

    def messages(self, block=True):
        """Yield (type, buf, body offset, end) of every message in one read.

        Raises OSError(ENOBUFS) when the kernel dropped events for us, and
        the error of an error reply."""
        buf = self.read(block)
        if buf is not None:
            yield from walk(buf)

    def queued(self, most=64):
        """The messages of every datagram queued (up to `most` datagrams, in
        one recvmmsg), without waiting: an event socket's backlog.

        Raises OSError(ENOBUFS) when the kernel dropped events for us."""
        if self._slots is None or self._slots.count != most:
            self._slots = _Slots(most, 32 << 10)  # a route or link event is far smaller
        out = []
        for buf in self._slots.read(self.sock.fileno()):
            out.extend(walk(buf))
        return out

    def send(self, mtype, flags, body):
        """Send one request; returns its sequence number."""
        self.seq += 1
        self.sock.send(HEADER.pack(HEADER.size + len(body), mtype, flags, self.seq, 0) + body)
        return self.seq

    def dump(self, mtype, family, body=None):
        """Yield (type, buf, off, end) for every message of one dump."""
        if body is None:
            body = struct.pack("=B3x", family) + bytes(8)  # rtmsg/ifaddrmsg-sized
        self.send(mtype, NLM_F_REQUEST | NLM_F_DUMP, body)
        while True:
            done = False
            for m in self.messages():
                if m[0] == NLMSG_DONE:
                    done = True
                    break
                yield m
            if done:
                return
