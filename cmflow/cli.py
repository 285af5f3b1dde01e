"""cmflow: run many shell jobs on many machines from one short expression.

Usage:
  cmflow check FLOW [--hosts=FILE]
  cmflow plan FLOW [--hosts=FILE] [--format=FMT] [--resume [RUN_DIR] [--deep]]
  cmflow run FLOW [--hosts=FILE] [-j N] [--timeout=SECS] [--retries=N] [--halt=WHEN]
             [--run-dir=DIR] [--format=FMT] [--quiet] [--resume [RUN_DIR] [--deep]] [--no-report]
             [--keep-remote] [--fanout=N]
  cmflow eval EXPR [--tasks=MODULE]... [--hosts=FILE] [-j N] [--timeout=SECS] [--retries=N]
             [--halt=WHEN] [--run-dir=DIR] [--format=FMT] [--quiet] [--no-report] [--keep-remote]
             [--fanout=N]
  cmflow status [RUN_DIR] [--watch] [--format=FMT]
  cmflow report [RUN_DIR] [-o FILE]
  cmflow runs [ls] [--root=DIR] [--format=FMT]
  cmflow runs clean [--keep=N] [--older-than=DAYS] [--root=DIR]
  cmflow repl [--tasks=MODULE]... [--hosts=FILE]
  cmflow hosts list [TARGET] [--hosts=FILE]
  cmflow hosts check [TARGET...] [--hosts=FILE] [--connect-timeout=SECS]
  cmflow hosts trust HOST... [--hosts=FILE] [--yes] [--replace] [--connect-timeout=SECS]
  cmflow exec COMMAND [--on=TARGET] [--hosts=FILE] [--timeout=SECS] [--connect-timeout=SECS]
  cmflow data add [--] FILE [--service=NAME] [--name=NAME] [--force] [--config=FILE]
  cmflow data ls [--service=NAME] [--format=FMT] [--config=FILE]
  cmflow data get [--] NAME [DEST] [--force] [--config=FILE]
  cmflow data del [--] NAME [--config=FILE]
  cmflow data share [--] NAME [--with=USER]... [--public] [--expires=DURATION] [--config=FILE]
  cmflow data unshare [--] NAME [--with=USER]... [--public] [--config=FILE]
  cmflow data services [--config=FILE]
  cmflow vm up N [--name=PREFIX] [--provider=P] [--box=BOX | --image=IMAGE] [--cpus=C] [--memory=MB]
             [--dir=DIR]
  cmflow vm (status | ssh-config | halt) [--name=PREFIX] [--dir=DIR]
  cmflow vm destroy [--name=PREFIX] [--dir=DIR] [--yes]
  cmflow (-h | --help)
  cmflow --version

Commands:
  check         Parse and compile a flow; report every mistake with its position.
  plan          Show the jobs a flow would run: text tree, json (for scripts) or dot.
  run           Run a flow on the inventory's hosts and print its value.
  eval          Run one expression with the tasks of the given modules.
  repl          Evaluate expressions interactively (statements stay for the session).
  status        Per host: jobs staging, running, fetching, done, failed; bytes
                sent and fetched; ETA; failed jobs and why. Reads a run
                directory (default: the latest under ./runs), running or ended.
  report        Write a run's report, one self-contained HTML file (default: the
                latest run, into its report.html).
  runs          List the runs under runs/ (id, flow, start, wall, jobs, state);
                clean removes old ones (never a running one, never the newest).
  hosts list    Show the inventory as the executor sees it.
  hosts check   Connect to every host at once: reachable, CPUs and load, or why not.
  hosts trust   Fetch a host's key as ssh reaches it (ssh -G: alias, port, jumps), show
                its fingerprint, file it where and as ssh looks it up.
  exec          Run one command on every host of a target at once; stdout gathered as
                `clush -b` does (equal outputs, node sets folded), stderr apart.
  data          Store files in a storage service and keep a record of each in a database.
  vm up         Start N machines with Vagrant (again with a larger N: add nodes); they
                are hosts at once: DIR/hosts.yaml, host keys pinned, checking strict.
  vm status     Each node's state, address and slots.
  vm ssh-config The nodes' ssh settings (strict, pinned keys), for plain `ssh -F`.
  vm halt       Stop the machines; `vm up` starts them again.
  vm destroy    Remove the machines and everything `vm up` wrote in DIR.

Options:
  --hosts=FILE            Inventory (default: ./hosts.yaml, $CMFLOW_HOSTS,
                          ~/.cmflow/hosts.yaml, else this machine).
  --format=FMT            plan: text, json or dot; run/eval/status: text or json;
                          data ls: table or json [default: text].
  -j N, --jobs=N          Run at most N jobs at once across all hosts.
  --timeout=SECS          Kill a job (its whole process tree) after SECS.
  --fanout=N              Open at most N ssh connections at once (as clush's
                          fanout); more hosts connect as these are up [default: 64].
  --retries=N             Re-run a job that fails up to N times [default: 0].
  --halt=WHEN             On a failure: never (carry on with independent work),
                          soon (start nothing new) or now (kill everything)
                          [default: never].
  --run-dir=DIR           Where to keep job output and logs [default: runs/<id>].
  --resume                Reuse the OK results of an earlier run (RUN_DIR, default
                          the latest run of this flow) whose invocation has the
                          same key: task, command, arguments, placement,
                          environment, input files. Everything else runs. With
                          plan: which jobs are cached, and why the others run.
  --deep                  With --resume, fingerprint input files by content
                          (sha256), not size and mtime. Also: --resume=deep.
  --no-report             Do not write report.html into the run directory.
  -o FILE                 Where report writes the HTML [default: RUN_DIR/report.html].
  --root=DIR              The folder that holds the runs [default: runs].
  --keep=N                runs clean: keep the newest N runs.
  --older-than=DAYS       runs clean: remove runs started more than DAYS ago.
  -q, --quiet             Print only the flow's value.
  --keep-remote           Keep every job's work directory on its host (a failed
                          job's is always kept, and its path shown).
  --watch                 Refresh the status every second until the run ends.
  --tasks=MODULE          A task module (name or file.py) for eval and repl.
  --on=TARGET             Hosts for exec: a host, group, label or node[1-4] [default: all].
  --connect-timeout=SECS  Give up connecting after SECS [default: 10].
  --yes                   Trust the fetched keys / destroy the VMs without asking.
  --replace               Trust a key that differs from the one on file.
  --service=NAME          Storage service (default: the config's default).
  --name=NAME             data add: record name (default: its file name);
                          vm: node name prefix, nodes NAME1..NAMEN (default: vm).
  --provider=P            Vagrant provider: docker, virtualbox or libvirt
                          (default: $VAGRANT_DEFAULT_PROVIDER, else virtualbox).
  --box=BOX               Box for virtualbox/libvirt (e.g. debian/bookworm64).
  --image=IMAGE           Image for docker (with sshd and a 'vagrant' user).
  --cpus=C                CPUs per VM (also its slots; default: what it has).
  --memory=MB             Memory per VM in MB.
  --dir=DIR               Where the Vagrantfile, state and inventory live
                          (default: ./.cmflow/vm/NAME).
  --force                 Replace an existing record or local file.
  --with=USER             data share/unshare: a user who may read the record.
  --public                data share: anyone may read it; unshare: not any more.
  --expires=DURATION      data share: print a link that reads the file until it
                          expires (S3, Azure, Google): 90s, 30m, 12h, 7d (at most 7d).
  --config=FILE           Data config (default: $CMFLOW_DATA_CONFIG,
                          ~/.cmflow/data.yaml, else local folders).
  -h, --help              Show this text.
  --version               Show the version.

Exit status: 0 all done, 1 a task or host failed, 2 a flow, inventory or usage
error, 130/143 interrupted by Ctrl-C/SIGTERM.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import replace
from typing import Any

from docopt import DocoptExit, docopt

from . import __version__
from .errors import CmflowError, UsageError


def _int(args: dict, key: str, minimum: int = 0) -> int | None:
    v = args.get(key)
    if v is None:
        return None
    try:
        n = int(v)
    except ValueError:
        raise UsageError(f"{key} expects a whole number, got {v!r}") from None
    if n < minimum:
        raise UsageError(f"{key} must be at least {minimum}, got {n}")
    return n


def _seconds(args: dict, key: str) -> float | None:
    v = args.get(key)
    if v is None:
        return None
    try:
        n = float(v)
    except ValueError:
        raise UsageError(f"{key} expects a number of seconds, got {v!r}") from None
    if n <= 0:
        raise UsageError(f"{key} must be positive, got {v}")
    return n


def format_value(value: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(value)
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _print_failures(run: Any) -> None:
    res = run.result
    err = sys.stderr
    if run.signal is not None:
        err.write(f"interrupted by signal {run.signal}: running jobs killed; log in {run.run_dir}\n")
    if res.failures:
        err.write(f"\n{len(res.failures)} failure{'s' if len(res.failures) != 1 else ''}:\n")
        for f in res.failures:
            where = f" on {f.host}" if f.host else ""
            what = f.job.label if f.job else "flow"
            at = f" ({f.job.where})" if f.job else ""
            err.write(f"  {what}{at}{where}: {f.reason}\n")
            for line in f.stderr_tail.splitlines():
                err.write(f"    | {line}\n")
    if res.down_hosts:
        err.write(f"hosts marked down: {', '.join(res.down_hosts)}\n")
    if res.failures or run.signal is not None:
        err.write(f"run directory: {run.run_dir}\n")


def _say_implicit_inventory(args: dict, inv: Any) -> None:
    """A run on hosts nobody named on the command line says where they came from, once."""
    from .hosts import BUILTIN

    if not args.get("--hosts") and inv.source != BUILTIN:
        n = len(inv.hosts)
        sys.stderr.write(f"cmflow: using inventory {inv.source} ({n} host{'s' if n != 1 else ''}; "
                         "--hosts FILE to choose another)\n")


def _run(args: dict, plan: Any, inv: Any) -> int:
    from . import api
    from .options import RunOptions

    halt = args["--halt"]
    if halt not in ("never", "soon", "now"):
        raise UsageError(f"--halt must be never, soon or now, not {halt!r}")
    fmt = args["--format"]
    if fmt not in ("text", "json"):
        raise UsageError(f"--format for run must be text or json, not {fmt!r}")
    options = RunOptions(jobs=_int(args, "--jobs", 1), timeout=_seconds(args, "--timeout"),
                         retries=_int(args, "--retries") or 0, halt=halt, keep_remote=args["--keep-remote"],
                         fanout=_int(args, "--fanout", 1) or 64)
    run_dir = None if args["--run-dir"] in (None, "runs/<id>") else args["--run-dir"]
    display = "quiet" if args["--quiet"] else "auto"
    _say_implicit_inventory(args, inv)
    resume = api.resume_source(plan, args["RUN_DIR"]) if args.get("--resume") else None
    options = replace(options, deep=bool(args.get("--deep")))
    run = api.run_sync(plan, inv, options, run_dir, display, resume=resume, report=not args["--no-report"])
    if run.result.ok:
        print(format_value(run.result.value, fmt))
    _print_failures(run)
    return run.exit_status


def _plan_resume(args: dict, plan: Any, inv: Any) -> int:
    from . import api
    from .resume import ResumeIndex, explain, render_explained

    fmt = args["--format"]
    if fmt not in ("text", "json"):
        raise UsageError(f"--format for plan --resume must be text or json, not {fmt!r}")
    source = api.resume_source(plan, args["RUN_DIR"])
    decisions = explain(plan, inv, ResumeIndex.load(source), bool(args["--deep"]))
    sys.stdout.write(render_explained(plan, decisions, source, fmt))
    return 0


class _Word:
    name = None

    def __init__(self, value: str):
        self.value = value


def _usage_entries() -> list[tuple[str, str]]:
    """(command words, its usage text) for each usage line of __doc__, continuation lines included."""
    body = __doc__.split("Usage:", 1)[1].split("\n\n", 1)[0]
    entries: list[tuple[str, str]] = []
    for line in body.splitlines():
        if line.startswith("  cmflow "):
            words = []
            for w in line.split()[1:]:
                if not re.fullmatch(r"[a-z][a-z-]*", w):
                    break
                words.append(w)
            entries.append((" ".join(words), line))
        elif line.strip() and entries:
            entries[-1] = (entries[-1][0], entries[-1][1] + "\n" + line)
    return [(k, v) for k, v in entries if k]


def _options_of(usage: str) -> set[str]:
    """The options a usage text names, with their other spellings from the Options section (-j and --jobs)."""
    names = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", usage))
    section = __doc__.split("\nOptions:", 1)[1] if "\nOptions:" in __doc__ else ""
    for line in section.splitlines():
        spellings = re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", line.split("  ", 2)[1] if line.startswith("  -")
                               and len(line.split("  ", 2)) > 2 else "")
        if names & set(spellings):
            names |= set(spellings)
    return names


def _close(word: str, options: list[str]) -> str:
    import difflib   # only on this error path: it costs start-up time on every run

    near = difflib.get_close_matches(word, options, n=1, cutoff=0.7)
    return f" (did you mean '{near[0]}'?)" if near else ""


def usage_error(argv: list[str], left: list[Any] = ()) -> str:
    """What is wrong with a command line, in one line, and the usage of the command it names."""
    entries = _usage_entries()
    commands = sorted({k.split()[0] for k, _ in entries})
    known_options = set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", __doc__))
    words = [a for a in argv if not a.startswith("-")]
    short = "Usage: cmflow COMMAND [ARGS]...; commands: " + ", ".join(commands) + "\n(cmflow --help says more)"
    if not words:
        bad = next((a for a in argv if a.split("=")[0] not in known_options), None)
        if bad:
            return f"cmflow: unknown option {bad.split('=')[0][:40]!r}" + _close(bad.split("=")[0], sorted(known_options)) \
                + "\n" + short
        return "cmflow: missing command\n" + short
    cmd = words[0]
    if cmd not in commands:
        return f"cmflow: unknown command {cmd[:40]!r}" + _close(cmd, commands) + "\n" + short
    mine = [(k, v) for k, v in entries if k.split()[0] == cmd]
    subs = sorted({k.split()[1] for k, _ in mine if len(k.split()) > 1})
    what = cmd
    if subs and len(words) > 1 and words[1] in subs:
        what = f"{cmd} {words[1]}"
        mine = [(k, v) for k, v in mine if k == what or k == cmd]
    usage = "Usage:\n" + "\n".join(v for _, v in mine)
    allowed = _options_of("\n".join(v for _, v in mine)) | {"-h", "--help"}
    for a in argv:
        if a == "--":
            break
        name = a.split("=", 1)[0] if a.startswith("--") else a[:2]
        if a.startswith("-") and len(a) > 1 and name not in allowed:
            if name in known_options:
                return f"cmflow {what}: option {name!r} does not apply here\n" + usage
            return f"cmflow {what}: unknown option {name[:40]!r}" + _close(name, sorted(allowed)) + "\n" + usage
    if subs and what == cmd and not any(k == cmd for k, _ in mine):
        sub = words[1] if len(words) > 1 else ""
        if sub:
            return f"cmflow: unknown command '{cmd} {sub[:40]}'" + _close(f"{cmd} {sub}", [f"{cmd} {x}" for x in subs]) \
                + "\n" + usage
        return f"cmflow {cmd}: missing sub-command ({', '.join(subs)})\n" + usage
    extra = [str(getattr(p, "value", "")) for p in left if getattr(p, "name", "") is None]
    if extra and extra[0]:
        return f"cmflow {what}: unexpected argument {extra[0][:40]!r}\n" + usage
    return f"cmflow {what}: missing or misplaced arguments\n" + usage


class _Args(dict):
    """docopt's answer for one command: what another command's usage names reads as absent (None)."""

    def __missing__(self, key: str) -> None:
        return None


def _usage_for(argv: list[str]) -> str:
    """The usage text docopt matches argv against: the lines of the command argv names, with every
    option's description (defaults included). docopt's matching grows with the whole pattern: the
    full usage cost ~40 ms of each start-up, most of a run's Python work before its first ssh.
    Help (-h also stacked with other letters, as docopt reads it), version and anything that names
    no command get the whole text (its help, its errors)."""
    head, sep, options = __doc__.partition("\nOptions:")
    command = argv[0] if argv else ""
    if not sep or not re.fullmatch(r"[a-z]+", command) or any(a in ("--help", "--version") or re.match(r"-[^-]*h", a) for a in argv):
        return __doc__
    usage = head.partition("\nCommands:")[0].splitlines()
    kept, keep = [], False
    for line in usage:
        if line.startswith("  cmflow "):
            keep = line.split()[1] == command
        if keep or not line.startswith("  "):
            kept.append(line)
    if not any(line.startswith("  cmflow ") for line in kept):
        return __doc__
    return "\n".join(kept) + "\nOptions:" + options


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:     # Ctrl-C before a run has its own handling (start-up, parsing): quietly
        return 130


def _main(argv: list[str] | None) -> int:
    # --resume=deep reads as --resume --deep (docopt cannot give one option an optional value)
    argv = sys.argv[1:] if argv is None else argv
    argv = [a for arg in argv for a in (("--resume", "--deep") if arg == "--resume=deep" else (arg,))]
    try:
        args = _Args(docopt(_usage_for(argv), argv=argv, version=f"cmflow {__version__}"))
    except DocoptExit as e:
        # one line that says what is wrong (never docopt's internals), then the usage that applies;
        # docopt names the arguments it could not place only in its message
        left = list(e.left) or [_Word(w) for w in re.findall(r"Argument\(None, '((?:[^'\\]|\\.)*)'\)", str(e))]
        sys.stderr.write(usage_error(argv, left) + "\n")
        return 2
    try:
        return dispatch(args)
    except CmflowError as e:
        sys.stderr.write(f"{e}\n")
        return e.exit_status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
    except OSError as e:
        # the system refused something a user named (a path too long, a full disk, no permission):
        # its own words and the name, not a traceback
        name = f": {str(e.filename)[:100]}" if e.filename else ""
        sys.stderr.write(f"cmflow: {e.strerror or e}{name}\n")
        return 1


def dispatch(args: dict) -> int:
    from . import api

    if args["hosts"]:
        from . import hostcmds

        return hostcmds.dispatch(args)
    if args["exec"]:
        from . import hostcmds

        return hostcmds.exec_command(args)
    if args["vm"]:   # before status: `vm status` sets "status" too
        from .vm import cli as vm_cli

        return vm_cli.dispatch(args)
    if args["status"]:
        from . import status

        return status.show(args["RUN_DIR"], args["--format"], args["--watch"])
    if args["data"]:
        from .data import cli as data_cli

        return data_cli.dispatch(args)
    if args["report"] or args["runs"]:
        from . import runcmds

        return runcmds.dispatch(args)
    if args["check"] or args["plan"]:
        plan, inv = api.load(args["FLOW"], args["--hosts"])
        if args["plan"] and args["--resume"]:
            return _plan_resume(args, plan, inv)
        if args["check"]:
            deferred = plan.deferred()
            more = f" + {deferred} deferred" if deferred else ""
            print(f"{args['FLOW']}: ok, {len(plan.jobs)} job{'s' if len(plan.jobs) != 1 else ''}{more}")
            return 0
        from .plan import RENDERERS

        fmt = args["--format"]
        if fmt not in RENDERERS:
            raise UsageError(f"--format for plan must be text, json or dot, not {fmt!r}")
        sys.stdout.write(RENDERERS[fmt](plan))
        return 0
    if args["run"]:
        plan, inv = api.load(args["FLOW"], args["--hosts"])
        return _run(args, plan, inv)
    if args["repl"]:
        from .repl import run_repl

        return run_repl(args["--tasks"], api.inventory(args["--hosts"]))
    if args["eval"]:
        plan, inv = api.load_expr(args["EXPR"], args["--tasks"], args["--hosts"])
        return _run(args, plan, inv)
    raise UsageError("unknown command")


if __name__ == "__main__":
    sys.exit(main())
