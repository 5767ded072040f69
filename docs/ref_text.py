"""Text helpers of docs/gen_ref.py: markdown escaping and tables, and reading a dataclass schema's comments, types and
validation rules from its source."""

from __future__ import annotations

import ast
import dataclasses
import io
import re
import tokenize
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------------------------- markdown helpers


def md(text: str) -> str:
    """Text for a table cell: `*`, `|`, `<` and backslashes escaped outside `code spans`, pipes everywhere."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(part.replace("|", "\\|"))
        else:
            part = part.replace("\\", "\\\\")
            for ch in "*|":  # intraword underscores and lone brackets are plain text in Python-Markdown and GFM
                part = part.replace(ch, "\\" + ch)
            out.append(part.replace("<", "&lt;"))
    return "".join(out)


def code(value: Any) -> str:
    """A value as the YAML a user writes: null, true/false, "" for an empty string."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif value == "":
        text = '""'
    else:
        text = str(value)
    return "`" + text.replace("|", "\\|") + "`"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("\n", " ") for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- schema comments


def field_comments(path: Path, class_name: str) -> dict[str, str]:
    """{field: its comment} for the dataclass `class_name` in `path` ('' where it has none)."""
    source = path.read_text()
    lines = source.splitlines()
    cls = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == class_name)
    fields = [(n.target.id, n.lineno, n.end_lineno) for n in cls.body
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]
    comments: dict[int, tuple[str, bool]] = {}  # line -> (text, trailing code on that line)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            comments[row] = (tok.string.lstrip("#").strip(), bool(lines[row - 1][:col].strip()))
    own = {name: [comments[r][0] for r in range(start, end + 1) if r in comments and comments[r][1]]
           for name, start, end in fields}
    for i, (name, _, end) in enumerate(fields):
        stop = fields[i + 1][1] if i + 1 < len(fields) else end + 1
        block = [comments[r][0] for r in range(end + 1, stop) if r in comments and not comments[r][1]]
        if block and i + 1 < len(fields) and not own[fields[i + 1][0]]:
            own[fields[i + 1][0]] = block  # the comment above a field without one of its own
        else:
            own[name] += block  # a comment continued below its field
    if fields and not own[fields[0][0]]:  # comment lines between the class line and its first field
        own[fields[0][0]] = [comments[r][0] for r in range(cls.lineno + 1, fields[0][1])
                             if r in comments and not comments[r][1]]
    return {name: " ".join(parts) for name, parts in own.items()}


def type_text(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    text = re.sub(r"Optional\[(.*)\]", r"\1 or null", text)
    return {"Any": "any"}.get(text, text)


def schema_rows(root: type, path: Path, prefix: str = "") -> list[dict]:
    """One dict per leaf key of the dataclass tree `root` (nested dataclasses are sections)."""
    comments = field_comments(path, root.__name__)
    out = []
    for f in dataclasses.fields(root):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        key = prefix + f.name
        if dataclasses.is_dataclass(default):
            out += schema_rows(type(default), path, key + ".")
        else:
            out.append({"key": key, "type": type_text(f.type), "default": default, "doc": comments[f.name]})
    return out


def validate_rules(path: Path, namespace: dict) -> dict[str, list[str]]:
    """{key: the messages config.validate gives for it}, from its `bad("key", "message")` calls."""
    rules: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "bad"
                and len(node.args) == 2 and isinstance(node.args[0], ast.Constant)):
            continue
        msg = node.args[1]
        if isinstance(msg, ast.Constant) and isinstance(msg.value, str):
            text = msg.value
        elif isinstance(msg, ast.JoinedStr):
            text = "".join(_fstring_part(v, namespace) for v in msg.values)
        else:
            continue
        rules.setdefault(node.args[0].value, []).append(text)
    return rules


SHORT = {"m": "model", "d": "data", "t": "train", "p": "parallel"}  # config.validate's local names


def _fstring_part(value: ast.expr, namespace: dict) -> str:
    if isinstance(value, ast.Constant):
        return str(value.value)
    assert isinstance(value, ast.FormattedValue)
    try:
        result = eval(compile(ast.Expression(value.value), "<rule>", "eval"), dict(namespace))  # module constants
        spec = "".join(str(v.value) for v in value.format_spec.values) if value.format_spec else ""
        return format(result, spec)
    except Exception:  # a value known only at run time: named, as the key it reads
        text = ast.unparse(value.value)
        return re.sub(r"\b([mdtp])\.", lambda m: SHORT[m.group(1)] + ".", text)


# --------------------------------------------------------------------------------------------- config reference


