"""``cmflow runs [ls]``, ``cmflow runs clean`` and ``cmflow report``: run directories from outside.

They read run directories only (rundir.py), so they work beside a run that is
still going in another process.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .errors import UsageError
from .rundir import RUNS_ROOT, latest_run, list_runs, remove_runs, select_for_clean, journal_counts


def dispatch(args: dict) -> int:
    if args["report"]:
        return report(args)
    root = Path(args["--root"] or RUNS_ROOT)
    if args["clean"]:
        return clean(args, root)
    return ls(args, root)


def _number(args: dict, key: str, kind: type) -> float | None:
    v = args.get(key)
    if v is None:
        return None
    try:
        n = kind(v)
    except ValueError:
        raise UsageError(f"{key} expects a {'whole ' if kind is int else ''}number, got {v!r}") from None
    if n < 0:
        raise UsageError(f"{key} must not be negative, got {v}")
    return n


def _wall(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def ls(args: dict, root: Path) -> int:
    runs = list_runs(root)
    rows = []
    for r in runs:
        counts = journal_counts(r.dir)
        jobs = r.meta.get("jobs", (r.summary or {}).get("jobs"))
        rows.append({"id": r.id, "flow": r.flow, "started": r.started, "wall": r.wall, "jobs": jobs,
                     "ok": counts["ok"], "failed": counts["failed"], "cached": counts["cached"], "state": r.state,
                     "dir": str(r.dir)})
    if args["--format"] == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if args["--format"] not in ("text", "table"):
        raise UsageError(f"--format for runs must be text or json, not {args['--format']!r}")
    if not rows:
        print(f"no runs under {root}/")
        return 0
    table = [("ID", "FLOW", "STARTED", "WALL", "JOBS", "OK", "FAILED", "CACHED", "STATE")]
    for row in rows:
        flow = row["flow"]
        try:
            flow = str(Path(flow).relative_to(Path.cwd())) if flow.startswith("/") else flow
        except ValueError:
            pass
        table.append((row["id"], flow or "-", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["started"])),
                      _wall(row["wall"]), str(row["jobs"] if row["jobs"] is not None else "-"), str(row["ok"]),
                      str(row["failed"]), str(row["cached"]), row["state"]))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def clean(args: dict, root: Path) -> int:
    keep = _number(args, "--keep", int)
    days = _number(args, "--older-than", float)
    if keep is None and days is None:
        raise UsageError("runs clean needs --keep=N or --older-than=DAYS (or both)")
    runs = list_runs(root)
    removed = list(remove_runs(select_for_clean(runs, int(keep) if keep is not None else None, days)))
    for r in removed:
        print(f"removed {r.dir}")
    print(f"{len(removed)} run{'s' if len(removed) != 1 else ''} removed, {len(runs) - len(removed)} kept")
    return 0


def report(args: dict) -> int:
    from .report import write_report

    run_dir = Path(args["RUN_DIR"]) if args["RUN_DIR"] else latest_run(RUNS_ROOT)
    if run_dir is None:
        raise UsageError(f"report: no run under {RUNS_ROOT}/ (give RUN_DIR)")
    if not (run_dir / "plan.json").is_file():
        raise UsageError(f"report: {run_dir} is not a run directory")
    out = Path(args["-o"]) if args["-o"] not in (None, "RUN_DIR/report.html") else run_dir / "report.html"
    write_report(run_dir, out)
    sys.stderr.write(f"report: {out}\n")
    return 0
