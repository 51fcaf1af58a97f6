"""A bounded, code-free reader for the REFER ``refs(<splitBy>).p`` pickles.

The pickles were written by Python 2. They are read by a restricted unpickler that may
name only builtin containers and scalars (:data:`SAFE_PICKLE_GLOBALS`), with caps on the
file size, the opcodes run, the values built and the nesting depth, so a hostile file
can neither run code nor take unbounded memory; bytes from Python 2 are decoded to text
(:func:`_norm`). Used by :mod:`hybridgl.eval.refer` and :mod:`hybridgl.eval.grefcoco`.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from hybridgl.errors import DataError


def _fix_text(s: str) -> str:
    """Undo latin-1 decoding of UTF-8 bytes (Python 2 ``str`` in a pickle)."""
    if any(ord(c) > 127 for c in s) and all(ord(c) < 256 for c in s):
        try:
            return s.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            return s
    return s


def _to_str(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, str):
        return _fix_text(v)
    return v


#: The only globals a REFER pickle may name: builtin containers and scalars (Python 2
#: names are mapped to these by ``fix_imports``). Plain REFER files name none at all.
SAFE_PICKLE_GLOBALS = frozenset(
    ("builtins", name)
    for name in (
        "list", "dict", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
        "int", "float", "bool", "complex",
    )
)  # fmt: skip


#: Largest refs pickle read (REFER's own are 30-100 MB).
MAX_REFS_PICKLE_BYTES = 512 << 20
#: Most pickle opcodes executed: each builds at most one small object (or reads bytes of
#: the file), so this bounds the memory the unpickler itself can take (about 100 B an op).
#: REFER's refs files take about 100 opcodes a ref, some 5 M in all.
MAX_PICKLE_OPS = 20_000_000
#: Most values the refs may hold *counted as a tree* (a value reached twice counts twice):
#: a few hundred bytes of shared references can describe a tree of 2**60 values, which
#: any walk or copy of it would expand. REFER's refs hold about 50 values a ref.
MAX_REFS_VALUES = 20_000_000
#: Deepest nesting of lists, dicts, tuples and sets (REFER's refs nest 4 deep).
MAX_REFS_DEPTH = 64


class UnsafePickleError(DataError):
    """A pickle names a global outside :data:`SAFE_PICKLE_GLOBALS` (it could run code)."""


class PickleLimitError(DataError):
    """A pickle is larger, deeper or more expensive to build than the limits allow."""


def _sized(kind: type) -> Any:
    """``bytes`` / ``bytearray`` for the unpickler, without the ``(n)`` form that allocates
    ``n`` zero bytes from a few bytes of pickle (any other argument is data of the file)."""

    def make(*args: Any) -> Any:
        if args and isinstance(args[0], int):
            raise PickleLimitError(
                f"{kind.__name__}({args[0]}) would allocate {args[0]} bytes the file does not hold"
            )
        return kind(*args)

    return make


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python unpickler that refuses every global but builtin containers and scalars,
    and stops after :data:`MAX_PICKLE_OPS` opcodes.

    Pure Python so that its stacks stay readable after a failure: a truncated file is
    salvaged from this one pass, never unpickled a second time.
    """

    ops = 0

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in SAFE_PICKLE_GLOBALS:
            if name in ("bytes", "bytearray"):
                return _sized(bytes if name == "bytes" else bytearray)
            return super().find_class(module, name)
        raise UnsafePickleError(f"{module}.{name}")


def _counting(op: Any) -> Any:
    def run(self: Any) -> Any:
        self.ops += 1
        if self.ops > MAX_PICKLE_OPS:
            raise PickleLimitError(f"more than {MAX_PICKLE_OPS:,} pickle operations")
        return op(self)

    return run


_RestrictedUnpickler.dispatch = {
    code: _counting(op)
    for code, op in pickle._Unpickler.dispatch.items()  # type: ignore[attr-defined]
}


_CONTAINERS = (list, tuple, dict, set, frozenset)


def _children(node: Any) -> Iterable[Any]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield v
    else:
        yield from node


def _check_shape(obj: Any) -> None:
    """Refuse refs nested deeper than :data:`MAX_REFS_DEPTH`, holding more than
    :data:`MAX_REFS_VALUES` values counted as a tree, or containing themselves.

    Iterative (no recursion to exhaust) and linear in the number of distinct containers:
    a container reached twice is measured once.
    """
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, int, bool]] = [(obj, 1, False)]
    while stack:
        node, depth, expanded = stack.pop()
        key = id(node)
        if expanded:
            on_path.discard(key)
            total = 1 + sum(
                size.get(id(c), 1) if isinstance(c, _CONTAINERS) else 1 for c in _children(node)
            )
            if total > MAX_REFS_VALUES:
                raise PickleLimitError(
                    f"it holds more than {MAX_REFS_VALUES:,} values once its shared "
                    "references are expanded"
                )
            size[key] = total
            continue
        if key in size:
            continue
        if key in on_path:
            raise PickleLimitError("it contains itself (a reference cycle)")
        if depth > MAX_REFS_DEPTH:
            raise PickleLimitError(f"it is nested more than {MAX_REFS_DEPTH} levels deep")
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend(
            (c, depth + 1, False)
            for c in _children(node)
            if isinstance(c, _CONTAINERS) and id(c) not in size
        )


def _salvage(u: Any) -> list[Any]:
    """Complete refs left on a failed unpickler's stacks (a truncated file)."""
    levels = list(getattr(u, "metastack", [])) + [getattr(u, "stack", [])]
    found: list[Any] = []
    if not levels or not levels[0]:
        return found
    base = levels[0]
    outer_at = next((k for k, x in enumerate(base) if isinstance(x, list)), None)
    if outer_at is None:
        return found
    found.extend(base[outer_at])
    # protocol 0 appends item by item (pending items sit after the list on the same
    # level); protocol >= 1 appends in batches (pending items sit one level deeper)
    found.extend(x for x in base[outer_at + 1 :] if isinstance(x, dict))
    if len(levels) > 1:
        found.extend(x for x in levels[1] if isinstance(x, dict))
    return found


def load_refs_pickle(path: Path) -> tuple[list[Any], str | None]:
    """Load a REFER refs pickle (Python 2 or 3) without running any code it names.

    The file is read once and unpickled once, by an unpickler that allows only builtin
    containers and scalars (:data:`SAFE_PICKLE_GLOBALS`); a truncated file is salvaged
    from that same pass.

    Returns:
        ``(refs, problem)``: ``problem`` describes a truncated or corrupt file from which
        the complete refs before the damage were recovered.

    Raises:
        UnsafePickleError: the pickle names any other global (a class, a function).
        DataError: the file is missing, unreadable, not a list, or nothing could be
            recovered from it.
    """
    import io

    if not path.is_file():
        raise DataError(f"refs file not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_REFS_PICKLE_BYTES:
            raise PickleLimitError(
                f"refs file {path} is {size:,} bytes; the limit is {MAX_REFS_PICKLE_BYTES:,}"
            )
        blob = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read refs file {path}: {e}") from None
    u = _RestrictedUnpickler(io.BytesIO(blob), encoding="latin1")
    try:
        obj = u.load()
        _check_shape(obj)
    except UnsafePickleError as e:
        raise UnsafePickleError(
            f"refs file {path} is not a REFER pickle: it names {e}, which could run code; "
            "refused (only builtin containers and scalars are allowed)"
        ) from None
    except PickleLimitError as e:
        raise PickleLimitError(f"refs file {path} is refused: {e}") from None
    except RecursionError:  # pragma: no cover - the unpickler and the checks are iterative
        raise PickleLimitError(f"refs file {path} is nested too deeply") from None
    except Exception as e:  # EOFError, UnpicklingError, ValueError, ...
        reason = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        refs = [r for r in _salvage(u) if _looks_like_ref(r)]
        try:
            _check_shape(refs)
        except PickleLimitError as limit:
            raise PickleLimitError(f"refs file {path} is refused: {limit}") from None
        if not refs:
            raise DataError(
                f"refs file {path} is truncated or corrupt ({reason}); no ref could be read"
            ) from None
        return refs, (
            f"refs file {path} is truncated or corrupt ({reason}); recovered {len(refs)} "
            "complete refs, the rest of the file is lost"
        )
    if not isinstance(obj, list):
        raise DataError(f"refs file {path} holds a {type(obj).__name__}, expected a list of refs")
    return obj, None


_REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


def _looks_like_ref(r: Any) -> bool:
    if not isinstance(r, dict):
        return False
    keys = {_to_str(k) for k in r}
    return all(k in keys for k in _REF_KEYS) and isinstance(
        r.get("sentences", r.get(b"sentences")), list
    )


def _norm(obj: Any, memo: dict[int, Any] | None = None) -> Any:
    """Decode bytes keys/values (pickles read with ``encoding='bytes'``) recursively.

    A container reached twice is converted once and shared, as in the input (a DAG stays
    a DAG; :func:`_check_shape` has bounded its depth)."""
    if not isinstance(obj, (dict, list)):
        return _to_str(obj)
    memo = {} if memo is None else memo
    done = memo.get(id(obj))
    if done is not None:
        return done
    if isinstance(obj, dict):
        out: Any = {}
        memo[id(obj)] = out
        out.update({_to_str(k): _norm(v, memo) for k, v in obj.items()})
    else:
        out = []
        memo[id(obj)] = out
        out.extend(_norm(v, memo) for v in obj)
    return out
