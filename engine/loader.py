"""YAML 1.2 loading with a position for every node, fast.

Owns: turning spec bytes into plain Python data (dict / list / str / int / float / bool /
None) under the YAML 1.2 core schema, every rule on what a spec file may contain (size,
depth, encoding, tabs, tags, aliases, one document), and mapping a path in the data back to
`file:line:col`. The only importer of rapidyaml (`ryml`) and ruamel.yaml.
Must not: know what a flow or a runbook is, or print.

Two paths give the same data (a property test holds them to it):

* fast: rapidyaml parses in place (C++), emits JSON, and `json.loads` builds the objects.
  No per-node Python work, so a 2 MB spec loads in ~0.1 s. Positions are found lazily, only
  for the nodes an error is about, by walking the ryml tree and taking the scalar's offset
  in the source buffer.
* exact: ruamel.yaml composes nodes with marks, and `_construct` resolves scalars by the
  core schema itself. Taken when the fast path cannot be trusted to agree: a tag, an alias,
  a duplicate key, a scalar the JSON emitter spells differently from the core schema (`~`,
  `True`, `0x1F`, `.inf`, `012`, ...), or anything the JSON round trip rejects.

A plain scalar that resolves to a float keeps its source text (`YamlFloat.text`), so a field
that expects a string gets `1.10`, not `1.1`.

Over the 700-line budget on purpose: the two paths and the guards that choose between them
must change together (a property test holds them to the same data), so they stay in one file.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from engine.errors import Diagnostic, SourceLocation, SpecError

__all__ = [
    "DEFAULT_LIMITS",
    "LoadedDocument",
    "LoaderLimits",
    "Path",
    "YamlFloat",
    "YamlInt",
    "load_document",
    "load_file",
    "pointer_of",
]

Path = tuple[str | int, ...]


class YamlFloat(float):
    """A float that remembers how it was written (`1.10` stays `1.10` as text)."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> YamlFloat:
        obj = super().__new__(cls, _parse_float(text))
        obj.text = text
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (YamlFloat, (self.text,))


class YamlInt(int):
    """An int written in a way its value does not show (`0755`, `0x1F`, `+3`): a field that
    expects a string gets the text as written."""

    text: str

    def __new__(cls, text: str, value: int) -> YamlInt:
        obj = super().__new__(cls, value)
        obj.text = text
        return obj

    def __reduce__(self) -> tuple[Any, ...]:
        return (YamlInt, (self.text, int(self)))


@dataclass(frozen=True, slots=True)
class LoaderLimits:
    """What a spec file may be. Generous for real specs, small enough to refuse abuse."""

    max_bytes: int = 16 * 1024 * 1024
    max_depth: int = 64
    max_nodes: int = 1_000_000  # counted as if aliases were expanded: refuses alias bombs


DEFAULT_LIMITS = LoaderLimits()

_CORE_TAGS = {
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map", "seq")
}


def pointer_of(path: Path) -> str:
    """RFC 6901 JSON pointer for a data path."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


class _Locator(Protocol):
    def offset(self, path: Path, *, key: bool) -> int | None: ...


class LoadedDocument:
    """Data loaded from one file, and the means to say where any part of it came from."""

    __slots__ = ("_line_starts", "_locator", "data", "path", "raw", "text")

    def __init__(self, path: str, raw: bytes, text: str, data: Any, locator: _Locator) -> None:
        self.path = path
        self.raw = raw
        self.text = text
        self.data = data
        self._locator = locator
        self._line_starts: list[int] | None = None

    def locate(self, path: Path, *, key: bool = False) -> SourceLocation:
        """Where the node at `path` starts; with `key=True`, where its mapping key starts.

        Falls back to the nearest ancestor that exists (a missing field points at its parent).
        """
        for depth in range(len(path), -1, -1):
            offset = self._locator.offset(path[:depth], key=key or depth < len(path))
            if offset is not None:
                return self.location_at(offset)
        return SourceLocation(self.path, 1, 1)

    def find_after(self, path: Path, needle: str) -> SourceLocation | None:
        """Where `needle` first occurs at or after the start of the node at `path` (for a
        position inside a block scalar, whose text the loader has already unfolded)."""
        start = self._locator.offset(path, key=False)
        if start is None:
            return None
        index = self.raw.find(needle.encode("utf-8"), start)
        return self.location_at(index) if index != -1 else None

    def location_at(self, byte_offset: int) -> SourceLocation:
        if self._line_starts is None:
            starts = [0]
            starts.extend(m.end() for m in re.finditer(b"\r\n|\r|\n", self.raw))
            self._line_starts = starts
        line = bisect_right(self._line_starts, byte_offset)
        start = self._line_starts[line - 1]
        col = len(self.raw[start:byte_offset].decode("utf-8", errors="replace")) + 1
        return SourceLocation(self.path, line, col)


def load_file(
    path: str | os.PathLike[str], limits: LoaderLimits = DEFAULT_LIMITS
) -> LoadedDocument:
    """Read and load one spec file. Raises `SpecError` with positions on any problem."""
    display = os.fspath(path)
    try:
        size = os.path.getsize(display)
        if size > limits.max_bytes:
            _fail(
                display,
                1,
                1,
                "yaml.too-large",
                f"file is {size} bytes; the limit is {limits.max_bytes} bytes",
            )
        with open(display, "rb") as fh:
            raw = fh.read(limits.max_bytes + 1)
    except OSError as exc:
        _fail(display, 1, 1, "io.unreadable", f"cannot read file: {exc.strerror or exc}")
    return load_document(display, raw, limits)


def load_document(path: str, raw: bytes, limits: LoaderLimits = DEFAULT_LIMITS) -> LoadedDocument:
    """Load YAML bytes that came from `path` (used only for messages)."""
    if len(raw) > limits.max_bytes:
        _fail(
            path,
            1,
            1,
            "yaml.too-large",
            f"file is {len(raw)} bytes; the limit is {limits.max_bytes} bytes",
        )
    text = _decode(path, raw)
    _check_tabs(path, text)
    if not _has_irregular_scalar(text):
        fast = _load_fast(path, raw, limits)
        if fast is not None:
            return fast
    return _load_exact(path, raw, text, limits)


# ---------------------------------------------------------------------------------------
# checks on the raw text


def _fail(path: str, line: int, col: int, code: str, message: str, hint: str | None = None) -> Any:
    raise SpecError([Diagnostic(code, message, SourceLocation(path, line, col), "", hint)])


def _decode(path: str, raw: bytes) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        _fail(
            path,
            1,
            1,
            "yaml.bom",
            "file starts with a byte-order mark (BOM)",
            "save the file as UTF-8 without a BOM",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        start = raw.rfind(b"\n", 0, exc.start) + 1
        col = len(raw[start : exc.start].decode("utf-8", errors="replace")) + 1
        _fail(
            path,
            line,
            col,
            "yaml.encoding",
            f"invalid UTF-8: byte 0x{raw[exc.start]:02x} cannot start or continue a character",
            "save the file as UTF-8",
        )
    if not text.strip() or all(
        not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()
    ):
        _fail(
            path, 1, 1, "yaml.empty", "file is empty: expected a mapping with `version` and `kind`"
        )
    odd = _AMBIGUOUS_CHARS.search(text)
    if odd is not None:
        idx = odd.start()
        line = text.count("\n", 0, idx) + 1
        name = {
            "\x00": "NUL",
            "\x85": "NEXT LINE",
            "\u2028": "LINE SEPARATOR",
            "\u2029": "PARAGRAPH SEPARATOR",
        }[odd.group()]
        _fail(
            path,
            line,
            idx - text.rfind("\n", 0, idx),
            "yaml.encoding",
            f"file contains U+{ord(odd.group()):04X} ({name})",
            "YAML 1.1 and 1.2 disagree on whether it breaks a line; use \\n or remove it",
        )
    return text


# NUL is never text; NEL, LS and PS are line breaks in YAML 1.1 and not in 1.2, so a file
# holding one means different things to different tools.
_AMBIGUOUS_CHARS = re.compile("[\x00\x85\u2028\u2029]")


_TAB_INDENT = re.compile(r"^( *)\t", re.MULTILINE)


def _check_tabs(path: str, text: str) -> None:
    match = _TAB_INDENT.search(text)
    if match is not None:
        line = text.count("\n", 0, match.start()) + 1
        _fail(
            path,
            line,
            len(match.group(1)) + 1,
            "yaml.tab",
            "tab character in indentation; YAML indents with spaces only",
            "replace the tab with spaces",
        )


# Plain scalars that rapidyaml's JSON emitter spells differently from the YAML 1.2 core
# schema, and floats it rewrites (`-.5` -> `-0.5`, losing the source text). Only whole values
# count (after white space, `[`, `,` or `{` and before the end of the value), so prose rarely
# trips it; a false positive only costs the slower exact path. Two stages because a leading
# character class lets `re` skip ahead fast, and a leading look-behind does not.
_VALUE_CANDIDATE = re.compile(
    r"(?:^|[ \t\r\[,{])([~NTFIin0-9.+-][\w.+-]*)(?=[ \t]*(?:$|#|[,\]}]))", re.MULTILINE
)
_IRREGULAR_VALUE = re.compile(
    r"~|Null|NULL|True|TRUE|False|FALSE"
    r"|-0|[-+]?0[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+|\+[0-9.][\w.+-]*"
    r"|[-+]?\.?(?:inf|Inf|INF)|\.?(?:nan|NaN|NAN)"
    r"|[-+]?\.[0-9][\w.+-]*|[-+]?[0-9]+\.(?:[eE][-+]?[0-9]+)?"
)


def _has_irregular_scalar(text: str) -> bool:
    """Candidates are whole values (after white space or a flow indicator, up to the end of
    the value); one that the core schema and the JSON emitter would read differently sends
    the file down the exact path."""
    fullmatch = _IRREGULAR_VALUE.fullmatch
    return any(fullmatch(token) for token in _VALUE_CANDIDATE.findall(text))


# A tag, anchor or alias where a node can start: at the start of a line (after indentation and
# list dashes), after `: `, or after a flow indicator. `!x` inside a quoted CEL expression
# (`a && !b`) does not count; a rare false positive only costs a scan of the ryml tree. The
# regex finds the character fast; `_at_node_start` looks back from each (rare) hit.
_PROPERTY_CHAR = re.compile(rb"[!&*][^\s=&,\]}]")


def _at_node_start(raw: bytes, index: int) -> bool:
    i = index
    while i > 0 and raw[i - 1] in b" \t":
        i -= 1
    spaced = i < index
    if i == 0 or raw[i - 1] in b"\n\r[{,":
        return True
    if raw[i - 1] == ord(":"):
        return spaced
    while spaced and raw[i - 1] == ord("-"):  # `- - !tag` at the start of a line
        i -= 1
        spaced = False
        while i > 0 and raw[i - 1] in b" \t":
            i -= 1
            spaced = True
        if i == 0 or raw[i - 1] in b"\n\r":
            return True
    return False


def _maybe_node_properties(raw: bytes) -> bool:
    return any(_at_node_start(raw, m.start()) for m in _PROPERTY_CHAR.finditer(raw))


# ---------------------------------------------------------------------------------------
# fast path: rapidyaml + json


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.py_object),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def _address(obj: object) -> int:
    """The memory address behind a buffer (ryml hands out views into the parsed source)."""
    view = _PyBuffer()
    get = ctypes.pythonapi.PyObject_GetBuffer
    get.argtypes = [ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int]
    release = ctypes.pythonapi.PyBuffer_Release
    release.argtypes = [ctypes.POINTER(_PyBuffer)]
    get(obj, ctypes.byref(view), 0)
    try:
        return int(view.buf or 0)
    finally:
        release(ctypes.byref(view))


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """rapidyaml prints parse errors to fd 2 before raising; the message is ours to give."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _RymlLocator:
    def __init__(self, tree: Any, buf: bytearray, root: int) -> None:
        self._tree = tree
        self._buf = buf
        self._root = root
        self._base = _address(buf)

    def offset(self, path: Path, *, key: bool) -> int | None:
        import ryml  # noqa: PLC0415  (already loaded by the fast path)

        tree, node = self._tree, self._root
        for part in path:
            if tree.is_map(node) and isinstance(part, str):
                node = tree.find_child(node, part.encode("utf-8"))
            elif (
                tree.is_seq(node) and isinstance(part, int) and 0 <= part < tree.num_children(node)
            ):
                node = tree.child(node, part)
            else:
                return None
            if node == ryml.NONE or node >= tree.size():
                return None
        return self._node_offset(node, key=key)

    def _node_offset(self, node: int, *, key: bool) -> int | None:
        tree = self._tree
        if tree.has_key(node) and (key or tree.is_container(node) or tree.val(node) is None):
            return self._view_offset(tree.key(node), tree.is_key_quoted(node))
        if tree.has_val(node) and not tree.is_container(node):
            return self._view_offset(tree.val(node), tree.is_val_quoted(node))
        if tree.has_children(node):
            offset = self._node_offset(tree.first_child(node), key=True)
            if offset is not None and tree.is_seq(node):
                offset = self._dash_before(offset)
            return offset
        return None

    def _view_offset(self, view: Any, quoted: bool) -> int | None:
        if view is None:
            return None
        offset = _address(view) - self._base
        if not 0 <= offset <= len(self._buf):
            return None
        if quoted and offset > 0 and self._buf[offset - 1] in (0x22, 0x27):
            offset -= 1
        return offset

    def _dash_before(self, offset: int) -> int:
        """A block list starts at the `-` of its first item, on the same line."""
        start = offset
        while start > 0 and self._buf[start - 1] in (0x20, 0x2D):  # spaces and dashes
            start -= 1
        dash = self._buf.find(b"-", start, offset)
        return dash if dash != -1 else offset


def _load_fast(path: str, raw: bytes, limits: LoaderLimits) -> LoadedDocument | None:
    import ryml  # noqa: PLC0415  (lazy: the loader's own engine, ~20 ms)

    buf = bytearray(raw)
    try:
        with _quiet_stderr():
            tree = ryml.parse_in_place(buf)
    except Exception:
        return None
    if tree.size() == 0:
        return None
    root = tree.root_id()
    if tree.is_stream(root):
        if tree.num_children(root) != 1:
            return None
        root = tree.first_child(root)
    if _maybe_node_properties(raw) and _has_node_properties(tree):
        return None
    text = raw.decode("utf-8")
    try:
        with _quiet_stderr():
            emitted = ryml.emit_json(tree, root)
        data = json.loads(emitted, parse_float=YamlFloat, object_pairs_hook=_unique_pairs)
    except Exception:
        return None
    if not isinstance(data, dict | list) or _too_deep(data, limits.max_depth):
        return None  # empty, a bare scalar, or too deep: the exact path says where, precisely
    return LoadedDocument(path, raw, text, data, _RymlLocator(tree, buf, root))


class _DuplicateKeyError(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _DuplicateKeyError
    return out


def _has_node_properties(tree: Any) -> bool:
    import ryml  # noqa: PLC0415

    mask = ryml.KEYTAG | ryml.VALTAG | ryml.KEYANCH | ryml.VALANCH | ryml.KEYREF | ryml.VALREF
    type_of = tree.type
    return any(type_of(i) & mask for i in range(tree.size()))


def _too_deep(data: Any, max_depth: int) -> bool:
    """Whether containers nest deeper than `max_depth` (the top level counts as 1)."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > max_depth:
            return True
        children = node.values() if type(node) is dict else node
        for child in children:
            if type(child) is dict or type(child) is list:
                push((child, depth + 1))
    return False


# ---------------------------------------------------------------------------------------
# exact path: ruamel.yaml nodes, core-schema resolution of our own


_NULL = re.compile(r"^(?:null|Null|NULL|~|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT10 = re.compile(r"^[-+]?[0-9]+$")
_INT8 = re.compile(r"^0o[0-7]+$")
_INT16 = re.compile(r"^0x[0-9a-fA-F]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_SPECIAL = re.compile(r"^(?:[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")


def _parse_float(text: str) -> float:
    lowered = text.lower()
    if lowered.endswith((".inf", ".nan")):
        return float(lowered.replace(".", ""))
    return float(text)


def resolve_plain(text: str) -> Any:
    """Resolve a plain scalar by the YAML 1.2 core schema."""
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT10.match(text):
        value = int(text, 10)
        return value if str(value) == text else YamlInt(text, value)
    if _INT8.match(text):
        return YamlInt(text, int(text[2:], 8))
    if _INT16.match(text):
        return YamlInt(text, int(text[2:], 16))
    if _FLOAT.match(text) or _SPECIAL.match(text):
        return YamlFloat(text)
    return text


class _MarkLocator:
    def __init__(self, offsets: dict[Path, tuple[int, int]]) -> None:
        self._offsets = offsets

    def offset(self, path: Path, *, key: bool) -> int | None:
        found = self._offsets.get(path)
        if found is None:
            return None
        return found[0] if key else found[1]


class _Builder:
    """Builds data from ruamel nodes, collecting every problem with its position."""

    def __init__(self, path: str, raw: bytes, limits: LoaderLimits) -> None:
        self.path = path
        self.limits = limits
        self.offsets: dict[Path, tuple[int, int]] = {}
        self.problems: list[Diagnostic] = []
        self.nodes = 0
        self._char_to_byte = _CharToByte(raw)

    def where(self, mark: Any) -> SourceLocation:
        return SourceLocation(self.path, int(mark.line) + 1, int(mark.column) + 1)

    def problem(
        self, mark: Any, code: str, message: str, pointer: Path, hint: str | None = None
    ) -> None:
        self.problems.append(Diagnostic(code, message, self.where(mark), pointer_of(pointer), hint))

    def build(self, node: Any, path: Path, key_mark: Any, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > self.limits.max_nodes:
            raise _TooBig(node)
        if depth > self.limits.max_depth and node.id != "scalar":
            raise _TooDeep(node)
        key_off = self._char_to_byte(
            key_mark.index if key_mark is not None else node.start_mark.index
        )
        # a mapping or list that is a key's value is "at" its key, as on the fast path
        at_key = key_mark is not None and (node.id != "scalar" or node.value == "")
        value_off = key_off if at_key else self._char_to_byte(node.start_mark.index)
        self.offsets[path] = (key_off, value_off)
        tag = str(node.tag)
        kind = node.id
        if kind == "scalar":
            return self._scalar(node, tag, path)
        if tag not in _CORE_TAGS:
            self.problem(
                node.start_mark,
                "yaml.tag",
                f"custom tag '{_short_tag(tag)}' is not allowed",
                path,
                "remove the tag; specs use plain YAML values",
            )
        if kind == "sequence":
            return [
                self.build(item, (*path, i), None, depth + 1) for i, item in enumerate(node.value)
            ]
        return self._mapping(node, path, depth)

    def _scalar(self, node: Any, tag: str, path: Path) -> Any:
        text = str(node.value)
        explicit = tag.startswith("!") or (
            tag.startswith("tag:yaml.org,2002:") and tag not in _CORE_TAGS
        )
        if explicit:
            self.problem(
                node.start_mark,
                "yaml.tag",
                f"custom tag '{_short_tag(tag)}' is not allowed",
                path,
                "remove the tag; specs use plain YAML values",
            )
            return text
        if node.style is not None:  # quoted or block: always a string unless tagged !!str...
            return text if tag == "tag:yaml.org,2002:str" else resolve_plain(text)
        implicit = resolve_plain(text)
        if tag == "tag:yaml.org,2002:str":
            return text
        return implicit

    def _mapping(self, node: Any, path: Path, depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        seen: dict[str, Any] = {}
        for key_node, value_node in _merged_pairs(node):
            if key_node.id != "scalar":
                self.problem(
                    key_node.start_mark, "yaml.key", "mapping keys must be plain strings", path
                )
                continue
            key = str(key_node.value)
            if key in seen:
                first = seen[key]
                self.problem(
                    key_node.start_mark,
                    "yaml.duplicate-key",
                    f"duplicate key '{key}' (first defined at line {first.line + 1})",
                    (*path, key),
                    "each key may appear once in a mapping",
                )
                continue
            seen[key] = key_node.start_mark
            out[key] = self.build(value_node, (*path, key), key_node.start_mark, depth + 1)
        return out


def _short_tag(tag: str) -> str:
    return (
        "!!" + tag.removeprefix("tag:yaml.org,2002:")
        if tag.startswith("tag:yaml.org,2002:")
        else tag
    )


def _merged_pairs(node: Any) -> list[tuple[Any, Any]]:
    """Mapping pairs with `<<` merge keys applied (explicit keys win over merged ones)."""
    pairs: list[tuple[Any, Any]] = []
    merged: list[tuple[Any, Any]] = []
    for key_node, value_node in node.value:
        if key_node.id == "scalar" and key_node.value == "<<" and key_node.style is None:
            sources = value_node.value if value_node.id == "sequence" else [value_node]
            for src in sources:
                if src.id == "mapping":
                    merged.extend(_merged_pairs(src))
            continue
        pairs.append((key_node, value_node))
    own = {k.value for k, _ in pairs if k.id == "scalar"}
    seen: set[Any] = set()
    extra = []
    for k, v in merged:
        if k.value not in own and k.value not in seen:
            seen.add(k.value)
            extra.append((k, v))
    return pairs + extra


class _CharToByte:
    """ruamel marks count characters; positions are resolved from byte offsets."""

    def __init__(self, raw: bytes) -> None:
        self._ascii = raw.isascii()
        self._text = raw.decode("utf-8") if not self._ascii else ""

    def __call__(self, index: int) -> int:
        if self._ascii:
            return index
        return len(self._text[:index].encode("utf-8"))


class _TooBig(Exception):
    def __init__(self, node: Any) -> None:
        self.node = node


class _TooDeep(_TooBig):
    pass


def _load_exact(path: str, raw: bytes, text: str, limits: LoaderLimits) -> LoadedDocument:
    from ruamel.yaml import YAML  # noqa: PLC0415  (lazy: ~60 ms, only for irregular files)
    from ruamel.yaml.error import MarkedYAMLError, YAMLError  # noqa: PLC0415

    yaml = YAML(typ="rt", pure=True)
    try:
        docs = list(yaml.compose_all(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at_end = mark is not None and int(mark.index) >= len(text.rstrip())
        if at_end and exc.context_mark is not None:
            mark = exc.context_mark  # "while scanning a quoted scalar": where it opened
        line, col = (int(mark.line) + 1, int(mark.column) + 1) if mark else (1, 1)
        _fail(path, line, col, "yaml.syntax", f"YAML syntax error: {exc.problem or exc.context}")
    except (YAMLError, RecursionError) as exc:
        _fail(path, 1, 1, "yaml.syntax", f"YAML syntax error: {exc}")
    docs = [d for d in docs if d is not None]
    if not docs:
        _fail(
            path, 1, 1, "yaml.empty", "file is empty: expected a mapping with `version` and `kind`"
        )
    if len(docs) > 1:
        mark = docs[1].start_mark
        line = _document_marker_line(text, int(mark.line))
        _fail(
            path,
            line + 1,
            1,
            "yaml.multi-document",
            f"file holds {len(docs)} YAML documents; a spec file holds exactly one",
            "split the documents into separate files",
        )
    too_big = _expanded_size(docs[0], {}, set(), limits.max_nodes)
    if too_big is not None:
        mark = too_big.start_mark
        _fail(
            path,
            int(mark.line) + 1,
            int(mark.column) + 1,
            "yaml.too-many-nodes",
            f"aliases expand the document past {limits.max_nodes} nodes (an alias bomb?)",
            "use fewer aliases",
        )
    builder = _Builder(path, raw, limits)
    try:
        data = builder.build(docs[0], (), None, 1)
    except _TooDeep as exc:
        mark = exc.node.start_mark
        _fail(
            path,
            int(mark.line) + 1,
            int(mark.column) + 1,
            "yaml.too-deep",
            f"nesting is deeper than {limits.max_depth} levels",
        )
    except _TooBig as exc:
        mark = exc.node.start_mark
        _fail(
            path,
            int(mark.line) + 1,
            int(mark.column) + 1,
            "yaml.too-many-nodes",
            f"document expands to more than {limits.max_nodes} nodes (an alias bomb?)",
            "use fewer aliases",
        )
    if builder.problems:
        raise SpecError(builder.problems)
    if data is None:
        _fail(
            path,
            1,
            1,
            "yaml.empty",
            "the document is empty: expected a mapping with `version` and `kind`",
        )
    return LoadedDocument(path, raw, text, data, _MarkLocator(builder.offsets))


def _document_marker_line(text: str, content_line: int) -> int:
    """The 0-based line of the `---` that opens the document whose content starts at
    `content_line` (or that line itself when there is no marker)."""
    lines = text.splitlines()
    for index in range(min(content_line, len(lines) - 1), -1, -1):
        if lines[index].startswith("---"):
            return index
    return content_line


def _expanded_size(node: Any, memo: dict[int, int], active: set[int], limit: int) -> Any:
    """Count nodes as if every alias were expanded, without expanding anything.

    Returns the node where the count passes `limit` (or a recursive alias), else None.
    Shared (aliased) nodes are counted from a memo, so this is linear in the source.
    """
    sizes: list[int] = []

    def size(n: Any) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        if key in active:
            raise _TooBig(n)
        active.add(key)
        total = 1
        if n.id == "sequence":
            for item in n.value:
                total += size(item)
        elif n.id == "mapping":
            for k, v in n.value:
                total += size(k) + size(v)
        active.discard(key)
        if total > limit:
            raise _TooBig(n)
        memo[key] = total
        return total

    try:
        sizes.append(size(node))
    except _TooBig as exc:
        return exc.node
    except RecursionError:
        return node
    return None


def walk_paths(data: Any, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every (path, value) pair in loaded data, parents before children."""
    yield prefix, data
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from walk_paths(value, (*prefix, key))
    elif isinstance(data, Sequence) and not isinstance(data, str | bytes):
        for index, value in enumerate(data):
            yield from walk_paths(value, (*prefix, index))
