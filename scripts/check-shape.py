#!/usr/bin/env python3
"""Checks the shape of the Rust code (CI runs it): no module over 600 lines, no function over 80
lines unless its doc comment says why (a line starting `/// Long because`), and no import circle
between the top-level modules of a crate. Unit tests in a separate `tests.rs` beside the module
do not count against it.

Hand-written (a page of Python) because no linter on crates.io or PyPI checks exactly these:
clippy's `too_many_lines` counts differently and knows no module size or import graph.
"""
import os
import re
import sys

MAX_MODULE = 600
MAX_FUNCTION = 80
ROOTS = ["src"] + [os.path.join("crates", c, "src") for c in sorted(os.listdir("crates"))]
FN = re.compile(r"^\s*(pub(\([a-z]+\))?\s+)?(async\s+)?(const\s+)?(unsafe\s+)?fn\s+(\w+)")


def code_only(text):
    """The text with string literals, char literals and comments blanked (so braces in them do
    not count), lines kept."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and not text[i - 1:i].isalnum():
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = '"' + hashes
            j = text.find(end, i + len(hashes) + 2)
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i:j + 1]))
            i = j + 1
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:i + 4]) or text.startswith("'\\u{", i):
            j = text.find("'", i + 1) if not text.startswith("'\\", i) else text.find("'", i + 2)
            out.append(" " * (j + 1 - i))
            i = j + 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def check_functions(path, lines, code_lines, problems):
    for idx, line in enumerate(code_lines):
        m = FN.match(line)
        if not m:
            continue
        depth, started, end = 0, False, None
        for j in range(idx, len(code_lines)):
            for ch in code_lines[j]:
                if ch == "{":
                    depth += 1
                    started = True
                elif ch == "}":
                    depth -= 1
                elif ch == ";" and not started and depth == 0:
                    end = j
                    break
            if end is not None or (started and depth == 0):
                end = j if end is None else end
                break
        if end is None or not started:
            continue
        length = end - idx + 1
        if length <= MAX_FUNCTION:
            continue
        doc = []
        k = idx - 1
        while k >= 0 and (lines[k].strip().startswith("///") or lines[k].strip().startswith("#[")):
            doc.append(lines[k].strip())
            k -= 1
        if not any(d.startswith("/// Long because") for d in doc):
            problems.append(f"{path}:{idx + 1}: fn {m.group(6)} is {length} lines (over {MAX_FUNCTION}, and no `/// Long because` says why)")


def module_name(root, path):
    rel = os.path.relpath(path, root)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def main():
    problems = []
    for root in ROOTS:
        graph = {}
        for dirpath, _, files in os.walk(root):
            for f in sorted(files):
                if not f.endswith(".rs"):
                    continue
                path = os.path.join(dirpath, f)
                text = open(path, encoding="utf-8").read()
                lines = text.split("\n")
                if f != "tests.rs" and len(lines) > MAX_MODULE:
                    problems.append(f"{path}: {len(lines)} lines (over {MAX_MODULE})")
                code_lines = code_only(text).split("\n")
                if f != "tests.rs":
                    check_functions(path, lines, code_lines, problems)
                if "bin" in os.path.relpath(path, root).split(os.sep) or f in ("lib.rs", "main.rs", "tests.rs"):
                    continue
                me = module_name(root, path)
                for used in re.findall(r"\bcrate::(\w+)", "\n".join(code_lines)):
                    if used != me:
                        graph.setdefault(me, set()).add(used)
        problems.extend(cycles(root, graph))
    for p in problems:
        print(p)
    print(f"check-shape: {len(problems)} problem(s)")
    sys.exit(1 if problems else 0)


def cycles(root, graph):
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                loop = stack[stack.index(nxt):] + [nxt]
                found.append(f"{root}: import circle: {' -> '.join(loop)}")
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


if __name__ == "__main__":
    main()
