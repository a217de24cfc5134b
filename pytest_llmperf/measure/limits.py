"""What one process can hold in flight: open files and local ports, raised where the OS lets us.

Every request in flight holds a socket; the default soft limit on open files
(often 1024) would turn high concurrency into ``EMFILE`` errors, and every
connection to one server needs a local port. This module must not open
connections; it reads and raises limits only.
"""

from __future__ import annotations

import resource

FILES_BESIDES_SOCKETS = 64
"""Open files a session holds besides one socket per request in flight: logs, pipes, pytest's own."""


def concurrency_problem(concurrency: int) -> str | None:
    """Why this process cannot hold ``concurrency`` requests in flight, or ``None``.

    Raises the soft open-file limit toward the hard one first, as a run
    would; then checks the hard limit and the local port range (every
    connection to one server needs its own local port).
    """
    needed = concurrency + FILES_BESIDES_SOCKETS
    soft = raise_open_file_limit(needed)
    if soft != resource.RLIM_INFINITY and soft < needed:
        most = max(soft - FILES_BESIDES_SOCKETS, 1)
        return (
            f"{concurrency} requests in flight need about {needed} open files, but this process may "
            f"open at most {soft} (ulimit -Hn); lower the concurrency to {most} or raise the hard limit"
        )
    ports = local_port_count()
    if ports is not None and concurrency > ports:
        return (
            f"{concurrency} requests in flight need as many connections to one server, but this machine "
            f"has {ports} local ports (net.ipv4.ip_local_port_range); lower the concurrency"
        )
    return None


def local_port_count(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int | None:
    """How many local ports the kernel hands out for outgoing connections (Linux), else ``None``."""
    try:
        with open(path, encoding="ascii") as handle:
            low, high = (int(part) for part in handle.read().split()[:2])
    except (OSError, ValueError):
        return None
    return high - low + 1


def raise_open_file_limit(needed: int) -> int:
    """Raise the soft open-file limit toward the hard one when ``needed`` is more.

    Each in-flight request holds one socket; the default soft limit (often
    1024) would turn high concurrency into ``EMFILE`` errors. Returns the
    soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        new = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
    return soft
