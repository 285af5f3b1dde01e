"""Tasks for flows/sweep.flow: count primes, split two ways.

``primes(block, digit)`` counts the primes in block ``block`` (numbers
``block * size`` up to ``(block + 1) * size``) whose last digit is ``digit``.
Every prime above 5 ends in 1, 3, 7 or 9, so summing over all blocks and
those four digits counts the primes below ``blocks * size``, except 2 and 5.
"""


def primes(block: int, digit: int, size: int = 25_000) -> str:
    lo, hi = int(block) * int(size), (int(block) + 1) * int(size)
    return (
        f"awk -v lo={lo} -v hi={hi} -v d={int(digit)} 'BEGIN {{ c = 0; "
        f"for (n = lo; n < hi; n++) {{ if (n < 2 || n % 10 != d) continue; p = 1; "
        f"for (k = 2; k * k <= n; k++) if (n % k == 0) {{ p = 0; break }} c += p }} print c }}'"
    )
