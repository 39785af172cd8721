"""YAML documents that remember where every value came from.

Given a file, `read` returns a `Document` (the Python data and the composed node tree); `validate` turns the data
into a frozen pydantic model and reports EVERY problem at once as a located `Problem`
(file:line:col, the rule it belongs to, the field, and a fix). YAML 1.1 traps are closed:
`15:55` stays the string "15:55" (not the base-60 integer 955), only true/false are booleans (so
`name: off` is a name and `flatten: yes` is an error, not a silent True), and duplicate keys are errors.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Callable, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from riskd.errors import ConfigError, Problem

M = TypeVar("M", bound=BaseModel)


class _Loader(yaml.SafeLoader):
    """SafeLoader without sexagesimal numbers: `at: 15:55` reads as the string "15:55"."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                                                                      "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(  # YAML 1.2 booleans only: `name: off` is a name, `flatten: yes` is an error
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


class _FastLoader(getattr(yaml, "CSafeLoader", _Loader)):  # type: ignore[misc]
    """The same on libyaml's parser, where PyYAML has it: 5,000 rules (1 MiB) took 18 s in the pure-Python
    parser. A file it refuses is parsed again by `_Loader`, whose messages are the documented ones."""


_FastLoader.yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers


class Document:
    """A parsed YAML file: `data` (plain Python) and `node` (the composed tree with marks)."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.text = text
        self.problems: list[Problem] = []
        self.node: yaml.Node | None = None
        self.data: Any = None
        try:
            _check_flow_depth(text)
            _check_block_depth(text)
            loader: Any = _FastLoader(text)
            try:
                node = loader.get_single_node()
            except (yaml.YAMLError, RecursionError):
                loader.dispose()
                loader = _Loader(text)  # refused: the pure-Python parser says where and why, as documented
                node = loader.get_single_node()
            try:
                self.node = node
                if self.node is not None:
                    _check_size(self.node)
                    self._check_duplicates(self.node)
                    self.data = loader.construct_document(self.node)
            finally:
                loader.dispose()
        except yaml.MarkedYAMLError as exc:
            line, col, field, message = _syntax_error(exc)
            self.problems.append(Problem(str(path), line, col, field, message + foreign_hint(text)))
            self.node = None
            self.data = None
        except yaml.YAMLError as exc:  # a ReaderError (control characters) has no mark
            line, col = _reader_position(text, getattr(exc, "position", 0))
            self.problems.append(Problem(str(path), line, col, "", f"YAML error: {exc}; remove control characters"))
            self.node = None
            self.data = None
        except ValueError as exc:  # a date that does not exist (2026-02-30): the constructor refuses it
            bad = _bad_date(self.node)
            shown = repr(bad.value) if bad is not None else ""
            self.problems.append(self.problem_at(bad, "", f"invalid date {shown} ({exc}); write a real date as YYYY-MM-DD"))
            self.node = None
            self.data = None
        except RecursionError:
            self.problems.append(Problem(str(path), 1, 1, "",
                                         f"nested deeper than the parser can follow; a rule file nests at most {MAX_DEPTH} levels"))
            self.node = None
            self.data = None
        except _TooBig as exc:
            self.problems.append(Problem(str(path), exc.line, exc.col, "", exc.message))
            self.node = None
            self.data = None

    def _check_duplicates(self, node: yaml.Node) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        first = seen[key.value].start_mark.line + 1
                        self.problems.append(self.problem_at(key, str(key.value), f"duplicate key (first set on line {first}); keep one"))
                    seen[key.value] = key
                self._check_duplicates(value)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                self._check_duplicates(item)

    def problem_at(self, node: yaml.Node | None, field: str, message: str, rule: str | None = None) -> Problem:
        mark = node.start_mark if node is not None else None
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return Problem(str(self.path), line, col, field, message, rule)

    def locate(self, loc: tuple[Any, ...], *, key: bool = False) -> yaml.Node | None:
        """Given a path of keys/indexes, return the deepest node that exists along it.

        With key=True and a path ending in a mapping key, return the key's node (for unknown keys).
        """
        node = self.node
        for i, part in enumerate(loc):
            last = i == len(loc) - 1
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                        node = k if (last and key) else v
                        break
                else:
                    return node
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                return node
        return node


def _bad_date(node: yaml.Node | None) -> yaml.ScalarNode | None:
    """The first scalar read as a date that is not one."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag == "tag:yaml.org,2002:timestamp":
            try:
                yaml.SafeLoader("").construct_yaml_timestamp(node)
            except ValueError:
                return node
        return None
    children = [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else (
        node.value if isinstance(node, yaml.SequenceNode) else [])
    return next((bad for child in children if (bad := _bad_date(child)) is not None), None)


MAX_DEPTH = 64
MAX_NODES = 100_000


class _TooBig(Exception):
    def __init__(self, node: yaml.Node | None, message: str):
        mark = node.start_mark if node is not None else None
        self.line, self.col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        self.message = message

    @classmethod
    def at(cls, line: int, col: int, message: str) -> "_TooBig":
        exc = cls(None, message)
        exc.line, exc.col = line, col
        return exc


def _check_size(root: yaml.Node) -> None:
    """Raise _TooBig if the tree nests deeper than MAX_DEPTH or expands (aliases followed) past MAX_NODES.

    Iterative, and each shared (aliased) node is sized once, so a billion-laughs file is refused in bounded time.
    """
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if depth > MAX_DEPTH:
            raise _TooBig(node, f"nested {depth} levels deep, over the limit of {MAX_DEPTH}; flatten the structure")
        kids = [c for kv in node.value for c in (kv if isinstance(kv, tuple) else (kv,))] if isinstance(node.value, list) else []
        if done:
            size[id(node)] = 1 + sum(size[id(c)] for c in kids)
            if size[id(node)] > MAX_NODES:
                raise _TooBig(node,
                              f"expands to over {MAX_NODES} values (anchors and aliases counted each time used); remove repeated aliases")
            continue
        if id(node) in size:
            continue
        stack.append((node, depth, True))
        stack.extend((c, depth + 1, False) for c in kids if id(c) not in size)


_FLOW_TOKEN = re.compile(r"""[\[\]{}"'#\n]""")


def _check_flow_depth(text: str) -> None:
    """Raise _TooBig if brackets ([ {) nest deeper than MAX_DEPTH, before PyYAML reads the text: its
    scanner is quadratic in the flow nesting (5,000 levels, a 10 KB file, took 5.5 s of CPU to refuse).
    Brackets inside quoted scalars and comments do not count; a plain scalar's brackets (rare in rules)
    count, which can only refuse a file, never let a deeper one through."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth, quote, comment = 0, "", False
    line, line_start = 1, 0
    for match in _FLOW_TOKEN.finditer(text):
        char = match.group()
        if char == "\n":
            comment = False
            line, line_start = line + 1, match.end()
        elif comment:
            continue
        elif quote:
            if char == quote:
                quote = ""  # an escaped quote (\" or '') only ends and restarts the scalar: the count stays right
        elif char in "\"'":
            quote = char
        elif char == "#":
            comment = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise _TooBig.at(line, match.start() - line_start + 1,
                                 f"nested over {MAX_DEPTH} levels deep (brackets); flatten the structure")
        else:
            depth = max(0, depth - 1)


def _check_block_depth(text: str) -> None:
    """Raise _TooBig if indentation nests deeper than MAX_DEPTH levels, before PyYAML reads the text
    (1,200 block levels in 720 KB took 0.8 s of CPU to refuse). Counts the stack of increasing indents
    of the lines that hold something; a compact `- - -` nesting is not counted (the parser's own limit
    still applies), so this can only refuse a file that nests too deep, never let one through."""
    stack: list[int] = []
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(raw) - len(stripped)
        while stack and stack[-1] >= indent:
            stack.pop()
        stack.append(indent)
        if len(stack) > MAX_DEPTH:
            raise _TooBig.at(number, indent + 1, f"nested over {MAX_DEPTH} levels deep (indentation); flatten the structure")


_TOML_OR_INI = re.compile(r"^[ \t]*(\[[^\]\n]+\][ \t]*|[A-Za-z_][\w.-]*[ \t]*=[ \t]*\S.*)$", re.MULTILINE)


def foreign_hint(text: str) -> str:
    """A hint for a file written as TOML or INI (`[section]`, `key = value`): riskd reads YAML; else ''."""
    if _TOML_OR_INI.search(text):
        return "; this looks like TOML or INI ([section], key = value): riskd reads YAML (key: value, lists as '- item')"
    return ""


def _reader_position(text: str, position: int) -> tuple[int, int]:
    position = max(0, min(position or 0, len(text)))
    return text.count("\n", 0, position) + 1, position - (text.rfind("\n", 0, position) + 1) + 1


def _syntax_error(exc: yaml.MarkedYAMLError) -> tuple[int, int, str, str]:
    """Given a PyYAML error, return (line, col, field, message): where the parser stopped, what it
    expected, and where the construct it was reading began."""
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    message = f"YAML syntax error: {exc.problem or 'invalid YAML'}"
    if exc.context and exc.context_mark and exc.context_mark is not mark:
        message += f" ({exc.context} that starts at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
    if "\\t" in (exc.problem or ""):
        message += "; YAML indents with spaces, never tabs"
    return line, col, "", message


MAX_FILE_BYTES = 1024 * 1024


def read(path: Path) -> Document:
    """Given a path, return its Document; raise ConfigError if the file cannot be read."""
    def fail(message: str, line: int = 1, col: int = 1) -> ConfigError:
        return ConfigError([Problem(str(path), line, col, "", message)])

    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise fail(f"file is {size} bytes, over the {MAX_FILE_BYTES} byte limit of a rule file; split it or remove what is not rules")
        data = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot read file: {exc.__class__.__name__}: {exc.strerror or exc}") from None
    if data.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in data[:2]:
        raise fail("file is UTF-16; save it as UTF-8")
    if b"\x00" in data:
        at = data.index(b"\x00")
        line, col = data[:at].count(b"\n") + 1, at - (data.rfind(b"\n", 0, at) + 1) + 1
        utf16 = data.count(b"\x00") * 3 > len(data)
        raise fail("file is UTF-16; save it as UTF-8" if utf16 else "NUL byte in file; remove it (is this a binary or a corrupted file?)",
                   line, col)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        col = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise fail(f"not UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8", line, col) from None
    return Document(path, text)


def _message(err: ErrorDetails, model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        homes = [home for home in _homes(model, str(loc[-1])) if home != (str(loc[-2]) if len(loc) > 1 else "")]
        if homes:
            return f"unknown key '{loc[-1]}' here; it belongs under '{homes[0]}:'"
        guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1, cutoff=0.7)
        if guess:
            return f"unknown key '{loc[-1]}'; did you mean '{guess[0]}'?"
        return f"unknown key '{loc[-1]}'; allowed keys: {', '.join(sorted(allowed))}"
    if kind == "invalid_key":
        return (f"a key must be text, got {_describe(err['input'])}; inside {{...}} a comma separates entries, so a number "
                "written with a thousands separator splits in two ({below: -1,000} reads as below: -1 and a key 000): "
                "write -1000")
    if kind == "missing":
        found = _model_at(model, loc)
        return "required key is missing" + (f"; add {found.expected}" if hasattr(found, "expected") else "")
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        found = _model_at(model, loc)
        return f"expected {getattr(found, 'expected', 'a mapping')}, got {_describe(err['input'])}"
    if kind == "list_type":
        return f"expected a list (one item per line, each starting with '- '), got {_describe(err['input'])}"
    if kind == "literal_error":
        return f"invalid value {err['input']!r}; write {err['ctx']['expected'].replace(chr(39), '')}"
    if kind == "string_type":
        return f"expected text, got {_describe(err['input'])}"
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    return msg


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the text {value!r}"
    return "a list" if isinstance(value, list) else "a mapping" if isinstance(value, dict) else type(value).__name__


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    """Given a model and a path into it, return the model that validates the value at that path (or None)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        if field is None:
            return None
        current = _model_in(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Given a model and a path into it, return the keys allowed in the mapping at that path."""
    current = _model_at(model, loc)
    return [f.alias or n for n, f in current.model_fields.items()] if current is not None else []


def _homes(model: type[BaseModel], key: str) -> list[str]:
    """Given a model and a key, return the names of the sections (anywhere in the model) where the key is valid."""
    homes: list[str] = []
    seen: set[type] = set()

    def walk(current: type[BaseModel], label: str) -> None:
        if current in seen:
            return
        seen.add(current)
        names = [f.alias or n for n, f in current.model_fields.items()]
        if key in names and label:
            homes.append(label)
        for name, f in current.model_fields.items():
            inner = _model_in(f.annotation)
            if inner is not None:
                walk(inner, f.alias or name)

    walk(model, "")
    return homes


def _model_in(annotation: Any) -> Any:
    """Find the BaseModel inside Optional[...] / list[...] / Annotated[...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    for meta in getattr(annotation, "__metadata__", ()) or ():
        found = _model_in(meta)
        if found is not None:
            return found
    origin = getattr(annotation, "__origin__", None)
    return _model_in(origin) if origin is not None and origin is not annotation else None


def validate(
    doc: Document,
    model: type[M],
    *,
    field_of: Callable[[tuple[Any, ...]], tuple[str | None, str, tuple[Any, ...]]] = lambda loc: (None, ".".join(map(str, loc)), loc),
    context: dict[str, Any] | None = None,
) -> M | None:
    """Given a Document and a model, return the validated model, or None with doc.problems filled.

    `field_of(loc)` maps a pydantic error location to (rule name, field label, yaml path).
    """
    if doc.problems:
        return None
    data = doc.data if doc.data is not None else {}
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p.startswith("function-") or "[" in p)))
            rule, label, yaml_path = field_of(loc)
            node = doc.locate(yaml_path, key=err["type"] in ("extra_forbidden", "null_value"))
            hint = foreign_hint(doc.text) if not loc else ""  # the whole file is not a mapping: INI's key = value is one long text
            doc.problems.append(doc.problem_at(node, label, _message(err, model, loc) + hint, rule))
        doc.problems.sort(key=lambda p: (p.line, p.col))
        return None
