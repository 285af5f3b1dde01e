"""The ``slurm:`` settings of an inventory host, validated (hosts.py calls ``parse``).

    cluster:
      slurm: {partition: debug, nodes: 4, time: "2:00:00", account: proj, options: [--qos=short]}
      labels: [hpc]

``submit: allocation`` (the default) asks for one allocation and runs every job
as work inside it; ``submit: jobs`` makes each job its own batch job.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Literal

Submit = Literal["allocation", "jobs"]

_KEYS = {"partition", "nodes", "time", "account", "options", "submit", "cpus_per_node", "max_array",
         "submit_rate", "poll"}
_TIME_RE = re.compile(r"(\d+-)?\d+(:\d+){0,2}|\d+-\d+|UNLIMITED|INFINITE", re.I)
_WORD_RE = re.compile(r"[A-Za-z0-9_.,:=+\-\[\]]+")


@dataclass(frozen=True)
class SlurmSpec:
    partition: str | None = None
    nodes: int = 1
    time: str | None = None                 # Slurm's --time syntax
    account: str | None = None
    options: tuple[str, ...] = ()           # more salloc/sbatch options, each one argv word
    submit: Submit = "allocation"
    cpus_per_node: int | None = None        # None: whole nodes (--exclusive)
    max_array: int | None = None            # None: the cluster's MaxArraySize
    submit_rate: float = 10.0               # sbatch calls per second at most (job mode)
    poll: float = 10.0                      # first interval between sacct calls (job mode), seconds

    def request_args(self) -> list[str]:
        """salloc/sbatch options shared by the pilot and by batch jobs."""
        argv = []
        if self.partition:
            argv.append(f"--partition={self.partition}")
        if self.account:
            argv.append(f"--account={self.account}")
        return argv + list(self.options)


def parse(value: Any, path: str, fail: Callable[[str, str], None]) -> SlurmSpec:
    """Validate a ``slurm:`` mapping; ``fail(key_path, message)`` raises the positioned error."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        fail(path, "expected a mapping of Slurm settings (partition, nodes, time, account, options, submit)")
    for k in value:
        if k not in _KEYS:
            fail(f"{path}.{k}", f"unknown key; expected one of {', '.join(sorted(_KEYS))}")

    def word(key: str) -> str | None:
        v = value.get(key)
        if v is None:
            return None
        if not isinstance(v, (str, int)) or isinstance(v, bool) or not _WORD_RE.fullmatch(str(v)):
            fail(f"{path}.{key}", f"expected a Slurm name (letters, digits, '_.-'), got {v!r}")
        return str(v)

    def positive(key: str, kind: type = int) -> Any:
        v = value.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float) if kind is float else int) or v <= 0:
            fail(f"{path}.{key}", f"expected a positive {'number' if kind is float else 'integer'}, got {v!r}")
        return v

    time = value.get("time")
    if time is not None:
        time = str(time)
        if not _TIME_RE.fullmatch(time):
            fail(f"{path}.time", f"expected a Slurm time limit (MINUTES, H:MM:SS or D-HH:MM:SS), got {time!r}")
    options = value.get("options") or []
    if not isinstance(options, list):
        fail(f"{path}.options", "expected a list of salloc/sbatch options, e.g. ['--qos=short']")
    for i, opt in enumerate(options):
        if not isinstance(opt, str) or not opt.startswith("-") or "\n" in opt:
            fail(f"{path}.options[{i}]", f"expected one option word starting with '-', got {opt!r}")
    submit = value.get("submit", "allocation")
    if submit not in ("allocation", "jobs"):
        fail(f"{path}.submit", f"expected 'allocation' or 'jobs', got {submit!r}")
    return SlurmSpec(partition=word("partition"), nodes=positive("nodes") or 1, time=time,
                     account=word("account"), options=tuple(options), submit=submit,
                     cpus_per_node=positive("cpus_per_node"), max_array=positive("max_array"),
                     submit_rate=float(positive("submit_rate", float) or 10.0),
                     poll=float(positive("poll", float) or 10.0))


def default_slots(spec: SlurmSpec) -> int:
    """Slots before Slurm has said anything: jobs in flight (job mode), else a guess the allocation replaces."""
    if spec.submit == "jobs":
        return 256
    return spec.nodes * (spec.cpus_per_node or 1)
