#!/usr/bin/env python3
"""Import cycles between a crate's top-level modules.

Usage: scripts/module-cycles.py [SRC_DIR]   (default: controller/src)

Every `crate::<module>` path outside comments and test code is an edge from the
module whose file holds it to <module>. Test code is left out: files named
`tests*.rs` / `*_tests.rs` or under a `tests*` folder, and everything from a `#[cfg(test)]` line to the end
of the file (tests sit at the end, by convention here). Prints the edges, then
every strongly connected component of more than one module; exits 1 if any.
"""
import os
import re
import sys
from collections import defaultdict

src = sys.argv[1] if len(sys.argv) > 1 else "controller/src"
ROOT_FILES = {"lib.rs", "main.rs"}


def top_module(rel):
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def code_of(path):
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip().startswith("#[cfg(test)]"):
                break
            lines.append(re.sub(r"//.*", "", line))
    return "".join(lines)


def crate_refs(code):
    refs = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", code))
    for group in re.finditer(r"\bcrate::\{", code):
        depth, i, body = 1, group.end(), []
        while i < len(code) and depth:
            c = code[i]
            depth += c == "{"
            depth -= c == "}"
            body.append(c if depth == 1 else ("" if c != "}" or depth else ""))
            i += 1
        flat = re.sub(r"\{[^{}]*\}", "", "".join(body))
        for item in flat.split(","):
            name = item.strip().split("::")[0].strip()
            if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                refs.add(name)
    return refs


edges = defaultdict(set)
for dirpath, _, files in os.walk(src):
    for name in files:
        if not name.endswith(".rs"):
            continue
        rel = os.path.relpath(os.path.join(dirpath, name), src)
        parts = rel.split(os.sep)
        if rel in ROOT_FILES or name.endswith("_tests.rs") or any(
            part.startswith("tests") for part in parts
        ):
            continue
        me = top_module(rel)
        for other in crate_refs(code_of(os.path.join(dirpath, name))):
            if other != me and other not in ("self", "super"):
                edges[me].add(other)

nodes = sorted(set(edges) | {m for targets in edges.values() for m in targets})
for node in nodes:
    print(f"{node} -> {', '.join(sorted(edges[node])) or '(nothing)'}")

index, low, stack, on_stack, sccs = {}, {}, [], set(), []


def strongconnect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges[v]:
        if w not in index:
            strongconnect(w)
            low[v] = min(low[v], low[w])
        elif w in on_stack:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on_stack.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(sorted(comp))


sys.setrecursionlimit(10000)
for node in nodes:
    if node not in index:
        strongconnect(node)
cycles = [c for c in sccs if len(c) > 1]
print()
if cycles:
    for c in cycles:
        print(f"cycle of {len(c)}: {', '.join(c)}")
    sys.exit(1)
print(f"no import cycles between the {len(nodes)} top-level modules of {src}")
