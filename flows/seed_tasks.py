"""Tasks for flows/seed.flow: small facts about the host, each a number.

Every task is a plain def that returns a shell command; cmflow runs the
command on a host and reads its stdout ("8" is the number 8).
"""
from cmflow import task


def a() -> str:
    """CPU cores on the host."""
    return "nproc"


def b() -> str:
    """Memory in MiB, from /proc/meminfo."""
    return "awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo"


def c() -> str:
    """The virtual-memory page size in bytes."""
    return "getconf PAGESIZE"


@task(timeout=30)
def d() -> str:
    """Bits in a C long (64 on a 64-bit system)."""
    return "getconf LONG_BIT"
