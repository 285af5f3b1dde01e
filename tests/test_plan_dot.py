"""``plan --format dot`` laid out by the real Graphviz (apt `graphviz`): it renders without a warning,
shows order by position, escapes as Graphviz reads strings, and stays small for a large plan."""
from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET

from cmflow.plan import render_dot

from conftest import ROOT, cmflow, need_tool
from cmflow.compiler import compile_file

SVG = "{http://www.w3.org/2000/svg}"


def _dot(source: str, fmt: str) -> str:
    r = subprocess.run([need_tool("dot", "graphviz"), f"-T{fmt}"], input=source, capture_output=True, text=True)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    return r.stdout


def _positions(source: str) -> dict[str, tuple[float, float]]:
    """name -> (x, y) from dot -Tplain (y grows upwards)."""
    pos = {}
    for line in _dot(source, "plain").splitlines():
        parts = line.split()
        if parts[0] == "node":
            pos[parts[1]] = (float(parts[2]), float(parts[3]))
    return pos


def _node_of(source: str, label_start: str) -> str:
    m = re.search(r'(n\d+) \[shape=box, label="' + re.escape(label_start), source)
    assert m, label_start
    return m.group(1)


def _compile(flowdir, tasks: str, flow: str):
    flowdir("dt.py", tasks)
    return compile_file(str(flowdir("f.flow", "from dt import *\n" + flow + "\n")))


def _svg_texts(svg: str) -> list[str]:
    return [t.text or "" for t in ET.fromstring(svg).iter(f"{SVG}text")]


def test_seed_plan_lays_out_sequence_left_to_right_and_operands_in_order(tmp_path):
    r = cmflow("plan", str(ROOT / "flows" / "seed.flow"), "--format", "dot", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    source = r.stdout
    _dot(source, "svg")
    pos = _positions(source)
    a, b, c, d = (_node_of(source, f"#{i} {n}") for i, n in enumerate("abcd", 1))
    # (a | b | c); d; a + b + c + d: the stages left to right, a | b | c top to bottom
    assert pos[a][0] < pos[d][0] and pos[b][0] < pos[d][0] and pos[c][0] < pos[d][0]
    assert pos[a][1] > pos[b][1] > pos[c][1]
    reused = re.findall(r'(n\d+) \[shape=box, style=dashed.*?label="#\d (\w) \(reused\)', source)
    assert [n for _, n in reused] == ["a", "b", "c", "d"]
    assert all(pos[node][0] > pos[d][0] for node, _ in reused)
    assert [n for n, _ in sorted(reused, key=lambda r: -pos[r[0]][1])] == [r[0] for r in reused]


def test_labels_are_escaped_for_graphviz_and_cut_visibly(flowdir):
    # é, a tab, quotes, backslashes, an escape character, a line continuation, an 80-character line
    command = 'printf "caf\u00e9\tx" \\\n  && echo "a\\\\b" \x1b ' + "y" * 80
    plan = _compile(flowdir, f"def e(): return {command!r}\ndef many(): return 'l1\\nl2\\nl3\\nl4'\n", "e; many")
    assert plan.jobs[0].command == command
    source = render_dot(plan)
    assert "\\u00e9" not in source and "café" in source
    texts = _svg_texts(_dot(source, "svg"))
    joined = "\n".join(texts)
    assert 'printf "café' in joined and 'echo "a\\\\b"' in joined and "\\x1b" in joined
    assert any(t.endswith("y…") for t in texts), texts          # a long line cut with a visible ellipsis
    assert "l3" in joined and "l4" not in joined and any(t.strip() == "…" for t in texts)   # lines cut too
    assert all("\t" not in t and "\x1b" not in t for t in texts)


def test_a_large_plan_is_collapsed_into_readable_summaries(flowdir):
    jobs = " | ".join(f"t({i})" for i in range(3000))
    sums = " + ".join(f"s({i}, k=2)" for i in range(200))
    plan = _compile(flowdir, "def t(i): return f'sleep 1; echo {i}'\ndef s(i, k=1): return f'echo {i} {k}'\n",
                    f"({jobs}); ({sums})")
    source = render_dot(plan)
    assert source.count("[shape=") < 20
    svg = _dot(source, "svg")
    root = ET.fromstring(svg)
    width, height = (float(root.get(k).removesuffix("pt")) for k in ("width", "height"))
    assert width < 2000 and height < 1000, (width, height)
    texts = _svg_texts(svg)
    assert "3000 × t(0 … 2999)" in texts and "200 × s(0 … 199, k=2)" in texts


def test_many_different_children_end_in_a_more_node(flowdir):
    plan = _compile(flowdir, "\n".join(f"def t{i}(): return 'echo {i}'" for i in range(60)) + "\n",
                    " | ".join(f"t{i}" for i in range(60)))
    texts = _svg_texts(_dot(render_dot(plan), "svg"))
    assert "… 37 more (37 jobs)" in texts and "#23 t22" in texts and "#24 t23" not in texts
