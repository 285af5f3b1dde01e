#!/usr/bin/env python3
"""Fuzz the flow parser + compiler and the YAML loaders in-process; count tracebacks (the goal is 0).

    python3 bench/fuzz.py [--inputs 100000] [--seed 1]

Every input must either be accepted or be refused with cmflow's own error
(``CmflowError``: a positioned flow error, a config error). Anything else is a
traceback a user would see, and is counted and shown. Inputs, in turn:

  - grammar-aware flows: seed flows cut into the language's tokens, mutated by
    inserting, deleting, repeating (deep brackets), swapping and replacing
    tokens from a vocabulary that holds the hard cases (bad escapes, NUL,
    surrogates, huge node ranges, operators, defs, keywords, continuations,
    and language v2: generators, hosts(), range(), values into tasks,
    @local defs, fold, sum, len, mean);
  - random flows: random characters from the language's alphabet and beyond;
  - inventories and data configs: seed YAML mutated line- and token-wise
    (aliases, merges, tags, deep nesting, duplicate keys, wrong types, huge
    ranges and numbers), and random YAML documents of any shape.

Prints the counts, the slowest input's time, and the first tracebacks. The
slow test tests/test_fuzz.py runs the same with a smaller count.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cmflow.compiler import compile_text  # noqa: E402
from cmflow.data.config import parse_config  # noqa: E402
from cmflow.errors import CmflowError  # noqa: E402
from cmflow.hosts import parse_inventory  # noqa: E402
from cmflow.tasks import TaskLoader  # noqa: E402

TASKS = '''
from cmflow import task

def a():
    return "echo a"

def b(x=1):
    return f"echo {x}"

def f(level, size=2):
    return f"run {level} {size}"

def g(*args, **kw):
    return "echo " + " ".join(map(str, args))

@task(hosts="gpu")
def onlygpu():
    return "nvidia-smi"

def bad():
    return 42
'''

SEED_FLOWS = [
    "from tk import a, b, f, g\n(a | b | f(1)); a + b + f(level=2, size='x')\n",
    "import tk as t\nx = t.a | t.b(3)\nx; x + t.f(1) @ gpu\n",
    "from tk import *\n@task(parse='lines')\ndef e(n):\n    return f'echo {n}'\n\ne(1) + e(2) @ \"n[1-2]\"\n",
    "from tk import a, b\na @ n[1-3] | b @ 'cpu!n2' ; (a ; b) + (b | a)\n",
    "from tk import f, g\nf([1, [2, 'x\\n']], size=None) | g(True, False, -1.5e3) # c\n",
    # language v2: generators, values into tasks, local functions, fold
    "from tk import a, b, f\npar(f(n) for n in range(8)) ; sum(b(i, j) for i in range(1, 3) for j in range(i))\n",
    "from tk import a, f\nseq(a @ h for h in hosts(all)) | par(f(n, size=m) for n, m in [[1, 'x'], [2, 'y']])\n",
    "from tk import b, g\nfrom cmflow import local\n@local\ndef add(x, y):\n    return x + y\n\n"
    "fold(add, par(b(i) for i in range(4))) + len(b(1) | b(2)) + mean(par(b(3)))\n",
    "from tk import b, g\ng(b(1), g(b(2)), x=sorted(b(3) | b(4))) @ n[1-2] ; sum(b(1) | b(2))\n",
]

VOCAB = [
    "a", "b", "f", "g", "t", "tk", "x", "e", "onlygpu", "bad", "nope", "t.a", "tk.f", "a.b.c",
    "(", ")", "[", "]", ",", "=", "|", ";", "+", "@", "*", ".", "\n", "\n\n", " ", "\t", "\\\n", "# c\n",
    "import", "from", "as", "True", "False", "None", "def", "return",
    "1", "-2", "3.5e10", "1e309", "0x10", "9" * 400, "'s'", '"s"', '"\\x0"', '"\\N{nope}"', '"\\N{BULLET}"',
    '"\\0"', '"a\x00b"', '"\\ud800"', '"\\U00110000"', '"\\u12"', "'\\'", '"\\q"', "'unterminated", '"é☃"',
    "n[1-3]", "n[01-100]", '"n[1-100000]x[1-100000]"', "'a!b'", "'n[1-4]&cpu'", "gpu", "cpu", "all",
    '"@grp"', '"n[1-10/2]"', "n[", "]x", "level=1", "size=", "f(1)", "f(level=1)", "g()", "b(1, 2)",
    "\ndef h(:\n    pass\n", "\ndef h():\n    raise SystemExit(0)\n", "\n@task(timeout=-1)\ndef k():\n    return 'x'\n",
    "\ndef z():\n    return 'echo z'\n", "\u00a0", "\r\n", "\x0c", "\ufeff", "𝕏",
    # language v2
    "par", "sum", "seq", "fold", "len", "min", "max", "mean", "sorted", "hosts", "range", "for", "in",
    "par(", "sum(", "seq(", "fold(", "hosts(all)", "hosts(", "range(", "range(3)", "range(1, 10**9)",
    "range(0, 5, 0)", "range(-3)", "range(1000001)", "range(10**12)", " for n in range(3)", " for n in ",
    " for a, b in [[1, 2], [3]]", " for h in hosts(all)", " for n in [1, 'x', [2]]", "f(n)", "b(a)", "n", "h",
    "@ h", "a @ n", "fold(b, ", "fold(a, b)", "fold(add, par(b(i) for i in range(3)))", "sum(a | b)", "sum(b)",
    "mean(", "len(a)", "b(b(b(1)))", "g(a, b, x=a)", "\n@local\ndef add(x, y):\n    return x + y\n",
    "\nfrom cmflow import local\n", "\n@local\ndef boom(x):\n    raise ValueError(x)\n", "local",
]

SEED_INVENTORY = """\
ssh_config: ./cfg
defaults: {user: alice, slots: 2}
hosts:
  here: {local: true, slots: 8}
  n[1-4]: {hostname: "{name}.lab.example.org", labels: [cpu]}
  gpu1: {hostname: 10.0.0.5, port: 2222, identity: ~/.ssh/id, slots: 1, labels: [gpu],
         env: {CUDA: "0"}, workdir: /scratch, ssh_options: [Compression=yes]}
groups:
  fast: [gpu1, n1]
"""

SEED_DATA = """\
default: {db: local, service: local}
db:
  local: {kind: local, path: ./db}
  mongo: {kind: mongo, url: "mongodb://127.0.0.1:1", database: x, timeout: 1}
service:
  local: {kind: local, path: ./st}
  s3: {kind: s3, access_key: {env: K}, secret_key: {env: S}, bucket: b}
"""

YAML_VOCAB = [
    "&a ", "*a", "<<: *a\n", "<<: [*a, *a]\n", "[", "]", "{", "}", ":", ": ", "- ", ",", "'", '"', "!!python/object:x ",
    "!!binary ", "!!str ", "\t", "\n", "\n  ", "#", "?", "|", ">", "%YAML 1.1\n", "---\n", "...\n", "1e309", "-1",
    "0", "9" * 40, "true", "null", "~", "{name}", "{nope}", "n[1-100000]x[1-100000]", "-oProxyCommand=x",
    "slots", "hosts", "labels", "env", "ssh_options", "workdir", "kind", "path", "url", "default", "db",
    "service", "cmdata", "\x00", "\x85", "\ud7ff", "é", "[" * 150, "]" * 150,
]


def tokens_of(text: str) -> list[str]:
    """A flow cut into rough tokens (names, strings, numbers, single characters)."""
    import re

    return re.findall(r"""[A-Za-z_][\w.]*|"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|\d[\w.]*|\s+|.""", text)


def mutate(rng: random.Random, toks: list[str], vocab: list[str]) -> list[str]:
    toks = list(toks)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        i = rng.randrange(len(toks) + 1)
        if op < 0.3:
            toks.insert(i, rng.choice(vocab))
        elif op < 0.5 and toks:
            del toks[min(i, len(toks) - 1)]
        elif op < 0.65 and toks:
            j = min(len(toks), i + rng.randint(1, 8))
            toks[i:i] = toks[i:j] * rng.randint(1, 3)
        elif op < 0.75:
            tok = rng.choice(vocab)
            toks.insert(i, tok * rng.choice([2, 10, 120, 400]))      # deep brackets, long runs
        elif op < 0.9 and len(toks) > 1:
            j = rng.randrange(len(toks))
            k = min(i, len(toks) - 1)
            toks[j], toks[k] = toks[k], toks[j]
        elif toks:
            toks[min(i, len(toks) - 1)] = rng.choice(vocab)
    return toks


def random_text(rng: random.Random, alphabet: str) -> str:
    n = rng.randint(0, 80)
    if rng.random() < 0.2:
        return "".join(chr(rng.randint(0, 0x10FFFF)) if rng.random() < 0.3 else rng.choice(alphabet)
                       for _ in range(n)).encode("utf-8", "replace").decode("utf-8", "replace")
    return "".join(rng.choice(alphabet) for _ in range(n))


def random_yaml(rng: random.Random, depth: int = 0):
    """A random document of any shape (dumped with safe_dump)."""
    r = rng.random()
    if depth > 3 or r < 0.35:
        return rng.choice([None, True, 0, -1, 2 ** 70, 1.5, float("inf"), "", "x", "{name}.a", "-o", "n[1-3]",
                           "~/d", "a b", "\x01", "Key=Value", "mongodb://u:p@[", "local", "mongo", "s3"])
    if r < 0.6:
        return [random_yaml(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["hosts", "defaults", "groups", "ssh_config", "include", "slots", "port", "hostname", "labels", "env",
            "user", "workdir", "ssh_options", "local", "identity", "db", "service", "default", "kind", "path", "url",
            "timeout", "n[1-2]", "h1", "cmdata", 1, None]
    return {rng.choice(keys): random_yaml(rng, depth + 1) for _ in range(rng.randint(0, 5))}


class Fuzzer:
    def __init__(self, seed: int, workdir: Path):
        self.rng = random.Random(seed)
        (workdir / "tk.py").write_text(TASKS)
        self.flow_file = str(workdir / "f.flow")
        self.loader = TaskLoader(workdir)
        self.inv = parse_inventory("hosts:\n  n[1-4]: {local: true, labels: [cpu]}\n  gpu1: {labels: [gpu]}\n"
                                   "groups:\n  fast: [n1, gpu1]\n", str(workdir / "hosts.yaml"))
        self.inv_file = str(workdir / "hosts.yaml")
        self.data_file = str(workdir / "data.yaml")
        self.flow_seeds = [tokens_of(s) for s in SEED_FLOWS]
        self.yaml_seeds = [tokens_of(SEED_INVENTORY), tokens_of(SEED_DATA)]
        self.alphabet = "".join(sorted(set("".join(SEED_FLOWS)))) + "\\\"'@[]{}!&^\x00\r\t"
        self.counts: Counter[str] = Counter()
        self.tracebacks: list[tuple[str, str, str]] = []
        self.slowest = (0.0, "", "")          # seconds, kind, the whole input
        self.slow: list[tuple[float, str, str]] = []   # inputs over SLOW seconds

    def one(self, i: int) -> None:
        kind = ("flow", "flow", "flow", "random-flow", "inventory", "inventory", "data", "random-yaml")[i % 8]
        rng = self.rng
        if kind == "flow":
            text = "".join(mutate(rng, rng.choice(self.flow_seeds), VOCAB))
        elif kind == "random-flow":
            text = random_text(rng, self.alphabet)
        elif kind == "random-yaml":
            import yaml

            text = yaml.safe_dump(random_yaml(rng), allow_unicode=True)
            if rng.random() < 0.5:
                text = "".join(mutate(rng, tokens_of(text), YAML_VOCAB))
            kind = rng.choice(["inventory", "data"])
        else:
            seed = self.yaml_seeds[0 if kind == "inventory" else 1]
            text = "".join(mutate(rng, seed, YAML_VOCAB))
        self.check(kind, text)

    def check(self, kind: str, text: str) -> None:
        t0 = time.perf_counter()
        try:
            if kind in ("flow", "random-flow"):
                compile_text(text, self.flow_file, loader=self.loader, is_target=self.inv.is_target,
                             target_names=self.inv.target_names())
            elif kind == "inventory":
                inv = parse_inventory(text, self.inv_file)
                for target in ("all", "cpu!n1", "n[1-3]", "nope"):
                    try:
                        inv.resolve(target)
                    except (KeyError, ValueError):
                        pass
            else:
                parse_config(text, self.data_file)
            self.counts[f"{kind}: accepted"] += 1
        except CmflowError:
            self.counts[f"{kind}: cmflow error"] += 1
        except Exception as e:  # noqa: BLE001 - exactly what the fuzzer looks for
            self.counts["TRACEBACKS"] += 1
            if len(self.tracebacks) < 5:
                self.tracebacks.append((kind, text, "".join(traceback.format_exception(e))))
        dt = time.perf_counter() - t0
        if dt > self.slowest[0]:
            self.slowest = (dt, kind, text)
        if dt > SLOW:
            self.counts[f"SLOW (> {SLOW:g} s)"] += 1
            self.slow.append((dt, kind, text))

    def run(self, n: int) -> int:
        for i in range(n):
            self.one(i)
        return self.counts["TRACEBACKS"]


SLOW = 2.0   # seconds: an input that takes longer is counted and kept (time must stay bounded for any input)


def fuzz(n: int, seed: int = 1) -> Fuzzer:
    with tempfile.TemporaryDirectory(prefix="cmflow-fuzz-") as d:
        fz = Fuzzer(seed, Path(d))
        fz.run(n)
    return fz


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", metavar="DIR", help="write each input that gave a traceback or was slow to DIR")
    args = ap.parse_args()
    t0 = time.perf_counter()
    fz = fuzz(args.inputs, args.seed)
    wall = time.perf_counter() - t0
    print(f"fuzz: {args.inputs} inputs (seed {args.seed}) in {wall:.1f} s, slowest {fz.slowest[0] * 1000:.0f} ms "
          f"({fz.slowest[1]}: {fz.slowest[2][:120]!r})")
    for k, v in sorted(fz.counts.items()):
        print(f"  {k:28} {v}")
    print(f"tracebacks: {fz.counts['TRACEBACKS']}")
    for kind, text, tb in fz.tracebacks:
        print(f"\n--- {kind} input {text[:300]!r}\n" + "\n".join(line[:300] for line in tb.splitlines()[-12:]))
    if args.keep:
        keep = Path(args.keep)
        keep.mkdir(parents=True, exist_ok=True)
        for i, (kind, text, _) in enumerate(fz.tracebacks):
            (keep / f"traceback-{i}.{kind}").write_text(text, errors="surrogatepass")
        for i, (dt, kind, text) in enumerate(fz.slow):
            (keep / f"slow-{i}-{dt:.0f}s.{kind}").write_text(text, errors="surrogatepass")
    return 1 if fz.counts["TRACEBACKS"] else 0


if __name__ == "__main__":
    sys.exit(main())
