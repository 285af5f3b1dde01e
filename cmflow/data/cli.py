"""``cmflow data add|ls|get|del|services``: printing only; the work is in DataService."""
from __future__ import annotations

import json
import re
import shutil
import sys

from ..errors import UsageError
from .config import load_config
from .record import Record
from .service import DataService


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def shorten(text: str, width: int) -> str:
    """Shorten in the middle, keeping both ends (the scheme and the file name) readable."""
    if len(text) <= width:
        return text
    if width <= 3:
        return text[:width]
    head = (width - 1) // 2
    tail = width - 1 - head
    return text[:head] + "…" + text[-tail:]


def table(records: list[Record], width: int, short: bool = False) -> str:
    modified = 10 if short else 19     # a narrow terminal drops the time of day before it cuts names
    cols = [("NAME", lambda r: r.name), ("SIZE", lambda r: human_size(r.size)),
            ("SERVICE", lambda r: r.service), ("MODIFIED", lambda r: r.modified[:modified].replace("T", " ")),
            ("POLICY", lambda r: r.policy), ("URL", lambda r: r.url)]
    rows = [[c[0] for c in cols]] + [[str(f(r)) for _, f in cols] for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    if not short and sum(widths[:-1]) + 2 * len(cols) + 12 > width:
        return table(records, width, short=True)
    # the URL gets what is left of the terminal; then the name, if still too wide
    url = len(cols) - 1
    fixed = sum(widths[:url]) + 2 * url
    widths[url] = max(12, min(widths[url], width - fixed))
    if fixed + widths[url] > width:
        widths[0] = max(8, widths[0] - (fixed + widths[url] - width))
    out = []
    for row in rows:
        cells = [shorten(c, w) for c, w in zip(row, widths)]
        cells[1] = cells[1].rjust(widths[1])
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(out)


MAX_LINK_SECONDS = 7 * 24 * 3600   # S3's and Google's limit for a signed link; the same everywhere


def duration(text: str) -> int:
    """`90`, `90s`, `30m`, `12h`, `7d` -> seconds."""
    m = re.fullmatch(r"(\d{1,9})([smhd]?)", text.strip())
    if not m or int(m.group(1)) == 0:
        raise UsageError(f"--expires expects a duration such as 90s, 30m, 12h or 7d, not {text[:40]!r}")
    seconds = int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if seconds > MAX_LINK_SECONDS:
        raise UsageError(f"--expires may be at most 7d (a signed link's limit on S3 and Google), not {text}")
    return seconds


def dispatch(args: dict) -> int:
    service = DataService(load_config(args["--config"]))
    if args["add"]:
        r = service.add(args["FILE"], args["--service"], args["--name"], args["--force"])
        print(f"added {r.name} ({human_size(r.size)}, sha256 {r.sha256[:12]}…) to {r.service}")
        return 0
    if args["ls"]:
        fmt = args["--format"] if args["--format"] != "text" else "table"
        if fmt not in ("table", "json"):
            raise UsageError(f"--format for data ls must be table or json, not {fmt!r}")
        records = service.ls(args["--service"])
        for w in service.warnings:
            print(f"warning: {w}", file=sys.stderr)
        if fmt == "json":
            print(json.dumps([r.to_dict() for r in records], indent=2))
        elif records:
            print(table(records, shutil.get_terminal_size((100, 24)).columns))
        else:
            print("no records", file=sys.stderr)
        return 0
    if args["get"]:
        path = service.get(args["NAME"], args["DEST"], args["--force"])
        print(f"{args['NAME']} -> {path}")
        return 0
    if args["del"]:
        r = service.delete(args["NAME"])
        print(f"deleted {r.name} from {r.service}")
        return 0
    if args["share"]:
        expires = duration(args["--expires"]) if args["--expires"] else None
        r, link = service.share(args["NAME"], tuple(args["--with"]), args["--public"], expires)
        print(f"{r.name}: {r.policy}", file=sys.stderr)
        if link:
            print(link)
        return 0
    if args["unshare"]:
        r = service.unshare(args["NAME"], tuple(args["--with"]), args["--public"])
        print(f"{r.name}: {r.policy}", file=sys.stderr)
        return 0
    if args["services"]:
        bad = 0
        for s in service.services():
            mark = "*" if s.default else " "
            state = "ok" if s.ok else "FAILED"
            bad += not s.ok
            print(f"{mark} {s.kind:<7} {s.name:<12} {s.provider:<6} {state:<6} {s.detail}")
        return 1 if bad else 0
    raise UsageError("unknown data command")
