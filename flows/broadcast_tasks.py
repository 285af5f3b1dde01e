"""Tasks for flows/broadcast.flow: prepare every host, then work on any of them."""

SCRATCH = "${TMPDIR:-/tmp}/cmflow-broadcast-demo"


def setup() -> str:
    """Once per host: a scratch folder with a lookup table the work reads."""
    return f"mkdir -p {SCRATCH} && seq 1 100 > {SCRATCH}/table && hostname"


def work(i: int) -> str:
    """Any host: sum every i-th line of the table (needs setup on that host first)."""
    return f"awk 'NR % {int(i)} == 0 {{ s += $1 }} END {{ print s + 0 }}' {SCRATCH}/table"
