#!/usr/bin/env python3
"""The crate's own `use` arrows between files: circles, and arrows from a lower room to a
higher one (issue 18, README "Design").

usage: scripts/check-imports.py [--list] [--strict]

Reads every `use crate::…` and `use super::…` line (groups `{a, b::c}` included) of src/,
and every `crate::…` path written out in the code (comments aside),
resolves each to the file that defines the module, and prints:
  - every circle between files (a strongly connected set of more than one file);
  - every arrow from a room to a room above it in ROOMS (a lower room must not know a higher
    one);
  - with --list, every arrow.
Exit 0 always, or 1 with --strict when there is a circle or an upward arrow.
"""

import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")

# Rooms from the bottom up: a file may use rooms of its own rank or below. Neutral rooms
# that several rooms share sit at the bottom.
ROOMS = [
    ["events", "crashpoint", "exit", "shutdown", "clock", "metrics"],
    ["config", "hubee", "systemd"],
    ["state", "deliver"],
    ["cluster"],
    ["sync"],
    ["outbox", "email"],
    ["daemon"],
    ["app", "main", "lib"],
]
RANK = {room: i for i, rooms in enumerate(ROOMS) for room in rooms}

USE = re.compile(r"^\s*(?:pub(?:\([^)]*\))?\s+)?use\s+((?:crate|super)::[^;]+);", re.M)
# A path written out in the code (`crate::events::acknowledged(…)`) is an arrow too.
INLINE = re.compile(r"\bcrate((?:::[A-Za-z_]\w*)+)")
COMMENT = re.compile(r"//[^\n]*")


def module_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    return rel if rel != ["lib"] else []


def file_of(parts):
    """The file defining the longest existing module prefix of `parts`."""
    for n in range(len(parts), 0, -1):
        base = os.path.join(ROOT, *parts[:n])
        for cand in (base + ".rs", os.path.join(base, "mod.rs")):
            if os.path.isfile(cand):
                return cand
    return os.path.join(ROOT, "lib.rs")


def expand(tree):
    """`a::{b, c::{d, e}}` → [a::b, a::c::d, a::c::e]."""
    tree = re.sub(r"\s+", "", tree)
    depth, start = 0, None
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                prefix, inner, rest = tree[:start], tree[start + 1:i], tree[i + 1:]
                items, d, cur = [], 0, ""
                for c in inner:
                    if c == "," and d == 0:
                        items.append(cur)
                        cur = ""
                        continue
                    d += (c == "{") - (c == "}")
                    cur += c
                if cur:
                    items.append(cur)
                out = []
                for it in items:
                    out.extend(expand(prefix + it + rest) if it else [])
                return out
    return [tree]


def room(path):
    rel = os.path.relpath(path, ROOT)
    return rel.split(os.sep)[0].removesuffix(".rs")


def main():
    files = []
    for d, _, names in os.walk(ROOT):
        files.extend(os.path.join(d, n) for n in names if n.endswith(".rs"))
    edges = {}
    for f in sorted(files):
        text = open(f, encoding="utf-8").read()
        # Only the code before the unit tests: a test module may use anything.
        text = text.split("#[cfg(test)]\nmod tests")[0]
        me = module_of(f)
        for m in USE.finditer(text):
            for path in expand(m.group(1)):
                parts = path.split("::")
                if parts[0] == "crate":
                    target = parts[1:]
                else:
                    # Each `super` goes one module up from this file's own module.
                    base = list(me)
                    while parts and parts[0] == "super":
                        parts = parts[1:]
                        base = base[:-1]
                    target = base + parts
                t = file_of([p for p in target if p not in ("self", "*")])
                if t != f:
                    edges.setdefault(f, set()).add(t)
        for m in INLINE.finditer(COMMENT.sub("", text)):
            t = file_of(m.group(1).split("::")[1:])
            if t != f:
                edges.setdefault(f, set()).add(t)
    rel = lambda p: os.path.relpath(p, os.path.dirname(ROOT))
    # Circles: Tarjan's strongly connected components.
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(files):
        if v not in index:
            strong(v)
    upward = []
    for a, targets in sorted(edges.items()):
        for b in sorted(targets):
            ra, rb = RANK.get(room(a)), RANK.get(room(b))
            if ra is not None and rb is not None and rb > ra:
                upward.append((a, b))
    if "--list" in sys.argv:
        for a, targets in sorted(edges.items()):
            for b in sorted(targets):
                print(f"{rel(a)} -> {rel(b)}")
    print(f"{len(sccs)} circle(s) between files")
    for c in sccs:
        print("  circle: " + " <-> ".join(rel(x) for x in c))
    print(f"{len(upward)} arrow(s) from a lower room to a higher one")
    for a, b in upward:
        print(f"  upward: {rel(a)} -> {rel(b)} ({room(a)} is below {room(b)})")
    unknown = sorted({room(f) for f in files} - set(RANK))
    if unknown:
        print(f"rooms not ranked in ROOMS: {', '.join(unknown)}")
    if "--strict" in sys.argv and (sccs or upward):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
