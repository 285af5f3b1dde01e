"""Monte Carlo estimate of pi, split into independent parts.

Each part throws ``n`` random points into the unit square with its own seed
and prints how many fell inside the quarter circle; adding the parts gives the
total hits, and pi ~= 4 * hits / (parts * n).
"""


def sample(seed: int, n: int = 200_000) -> str:
    return (
        f"awk -v seed={int(seed)} -v n={int(n)} 'BEGIN {{ srand(seed); h = 0; "
        f"for (i = 0; i < n; i++) {{ x = rand(); y = rand(); if (x * x + y * y <= 1) h++ }} "
        f"print h }}'"
    )


def estimate(seed: int, n: int = 200_000) -> str:
    """One part's own estimate of pi: 4 * hits / n."""
    return f"{sample(seed, n)} | awk '{{ printf \"%.6f\\n\", 4 * $1 / {int(n)} }}'"
