"""Tasks for flows/report.flow: values passed from task to task.

``stats`` gets the list of the samples' values and ``report`` the dict that
``stats`` printed (as JSON): their commands are built when those values exist.
"""
import shlex


def stats(values: list) -> str:
    """min, max and mean of a list of numbers, as a JSON object, computed on a host."""
    numbers = " ".join(str(float(v)) for v in values)
    return (f"printf '%s\\n' {numbers} | awk 'NR == 1 {{ lo = $1; hi = $1 }} "
            f"{{ s += $1; if ($1 < lo) lo = $1; if ($1 > hi) hi = $1 }} "
            f"END {{ printf \"{{\\\"n\\\": %d, \\\"min\\\": %g, \\\"max\\\": %g, \\\"mean\\\": %.1f}}\\n\", NR, lo, hi, s / NR }}'")


def report(summary: dict) -> str:
    """One line of text from the stats."""
    text = f"{summary['n']} parts, hits per part {summary['min']:g} .. {summary['max']:g}, mean {summary['mean']}"
    return f"echo {shlex.quote(text)}"

