"""The work budget of one chat-template rendering.

The sandbox (text/chat_template.py) stops templates from reaching unsafe attributes; this
module stops them from spending unbounded CPU or memory. A rendering may produce at most
``max_template_chars`` characters (every output piece counts, also those into ``{% set %}``
blocks and macro bodies), run ``max_template_loop_iterations`` loop iterations,
build no string or list larger than ``max_template_chars`` nor an integer wider than
``max_template_int_bits``, and take ``max_template_seconds`` (all in llmos.limits).

Work is checked *before* it is done where one step could allocate gigabytes (``center``,
``'%2000000000s'``, ``'{:>2000000000}'.format``, ``indent``, ``**``, ``*``, ``tojson``...),
and sizes are measured deeply: ``[x, x]`` of an 8-million-character ``x`` counts 16 million,
because turning it into text would. Going over raises :class:`OverBudget`, which the renderer
turns into a ChatTemplateError naming the limit.

How: a code-generator pass wraps every ``for`` iterable, every output piece and every ``~``
in a budget filter, and the environment's binop, call, str.format and filter hooks check the
rest. The budget of the rendering in progress lives in a ContextVar, out of the template's reach.
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import string
import time
from typing import Any, Callable, Iterable

from llmos import limits

__all__ = ["Budget", "OverBudget", "budgeted", "install"]


class OverBudget(Exception):
    """A rendering went over one of its limits; ``limit`` is the llmos.limits field."""

    def __init__(self, limit: str, what: str):
        value = getattr(limits.current(), limit)
        super().__init__(f"{what}: over llmos.limits.{limit} = {value} (raise it with "
                         f"llmos.limits.configure({limit}=...) or LLMOS_LIMIT_{limit.upper()})")
        self.limit = limit


class Budget:
    """What one rendering has spent. Not thread-safe: one per rendering (see :func:`budgeted`)."""

    def __init__(self) -> None:
        self.limits = limits.current()
        self.deadline = time.monotonic() + self.limits.max_template_seconds
        self.iterations = 0
        self.chars = 0

    def tick(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.max_template_loop_iterations:
            raise OverBudget("max_template_loop_iterations", "too many loop iterations")
        self.clock()

    def clock(self) -> None:
        if time.monotonic() > self.deadline:
            raise OverBudget("max_template_seconds", "rendering took too long")

    def emit(self, text: str) -> str:
        self.chars += len(text)
        if self.chars > self.limits.max_template_chars:
            raise OverBudget("max_template_chars", f"the template produced {self.chars} characters")
        self.clock()
        return text

    def fits(self, size: int, what: str) -> None:
        if size > self.limits.max_template_chars:
            raise OverBudget("max_template_chars", f"{what} would be {size} characters or items")

    def sized(self, value: Any, what: str = "a value") -> Any:
        """``value`` after checking its deep size (see :func:`deep_size`)."""
        self.fits(deep_size(value, self.limits.max_template_chars), what)
        if isinstance(value, int) and not isinstance(value, bool):
            self.int_bits(value.bit_length(), what)
        return value

    def int_bits(self, bits: int, what: str) -> None:
        if bits > self.limits.max_template_int_bits:
            raise OverBudget("max_template_int_bits", f"{what} would have {bits} bits")

    def text(self, value: Any) -> str:
        """str(value), refused before the conversion when the text would be too large."""
        if isinstance(value, str):
            return value
        self.sized(value, "text of a value")
        return str(value)


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("llmos_template_budget", default=None)


def current() -> Budget:
    b = _CURRENT.get()
    if b is None:  # a template rendered outside budgeted(): give it a fresh budget per call
        b = Budget()
    return b


class budgeted:
    """``with budgeted(): template.render(...)`` — one fresh budget for the rendering."""

    def __enter__(self) -> Budget:
        self._budget = Budget()
        self._token = _CURRENT.set(self._budget)
        return self._budget

    def __exit__(self, *exc: Any) -> None:
        _CURRENT.reset(self._token)


def deep_size(value: Any, cap: int) -> int:
    """Characters and items in ``value``, counting a shared element each time it appears (as
    str() would); stops counting once past ``cap``."""
    from jinja2.utils import Namespace

    total = 0
    stack = [value]
    seen_namespaces: set[int] = set()
    while stack and total <= cap:
        v = stack.pop()
        if isinstance(v, (str, bytes, bytearray)):
            total += len(v) + 1
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += len(v) + 1
            stack.extend(v)
        elif isinstance(v, dict):
            total += 2 * len(v) + 1
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, Namespace):
            if id(v) not in seen_namespaces:  # a namespace may hold itself
                seen_namespaces.add(id(v))
                stack.append(object.__getattribute__(v, "_Namespace__attrs"))
        elif isinstance(v, int) and not isinstance(v, bool):
            total += v.bit_length() // 3 + 1
        else:
            total += 1
    return total


# ---- the checks, per operation ----------------------------------------------------------------

_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def check_printf(b: Budget, fmt: Any, args: Any) -> None:
    """``fmt % args``: widths and precisions (also ``*`` ones taken from args) must fit."""
    if not isinstance(fmt, str):
        return
    star = False
    for m in _PRINTF.finditer(fmt):
        for part in m.groups():
            if part == "*":
                star = True
            elif part:
                b.fits(int(part), f"a %-format width of {part}")
    if star:
        for a in args if isinstance(args, tuple) else (args,):
            if isinstance(a, int):
                b.fits(abs(a), f"a %-format width of {a}")
    b.sized(args, "%-format arguments")


def check_format(b: Budget, fmt: str, args: Iterable[Any], kwargs: dict) -> None:
    """``fmt.format(...)``: widths and precisions in the specs (and any number a nested
    ``{...}`` spec could take from the arguments) must fit."""
    nested = False
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is None or not spec:
            continue
        if "{" in spec:
            nested = True
        for digits in re.findall(r"\d+", spec):
            b.fits(int(digits), f"a format width of {digits}")
    values = list(args) + list(kwargs.values())
    if nested:
        for a in values:
            if isinstance(a, int):
                b.fits(abs(a), f"a format width of {a}")
    b.sized(values, "format arguments")


def check_binop(b: Budget, operator: str, left: Any, right: Any) -> None:
    cap = b.limits.max_template_chars
    ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (left, right))
    if operator == "*":
        if ints:
            b.int_bits(left.bit_length() + right.bit_length(), "a product")
        for seq, count in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
                b.fits(deep_size(seq, cap) * max(count, 0), "a repeated value")
    elif operator == "**":
        if ints and right > 0 and abs(left) > 1:
            b.int_bits(abs(left).bit_length() * right, "a power")
    elif operator == "+":
        if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            b.fits(deep_size(left, cap) + deep_size(right, cap), "a sum")
    elif operator == "%":
        check_printf(b, left, right)


def _width_arg(args: tuple, kwargs: dict, name: str, position: int = 0) -> Any:
    return kwargs.get(name, args[position] if len(args) > position else None)


def check_method(b: Budget, func: Any, args: tuple, kwargs: dict) -> None:
    """Methods of str and int that allocate by a number they are given."""
    owner = getattr(func, "__self__", None)
    name = getattr(func, "__name__", "")
    if isinstance(owner, (str, bytes)):
        if name in ("center", "ljust", "rjust", "zfill"):
            _check_count(b, args, kwargs, "width", name)
        elif name == "expandtabs":
            size = _width_arg(args, kwargs, "tabsize")
            if isinstance(size, int):
                b.fits(len(owner) + max(size, 0) * owner.count("\t" if isinstance(owner, str) else b"\t"),
                       f"expandtabs({size})")
        elif name == "replace" and len(args) >= 2:
            check_replace(b, owner, args[0], args[1])
        elif name == "join" and args:
            b.sized(args[0], "join()")
    elif isinstance(owner, int) and name == "to_bytes":
        _check_count(b, args, kwargs, "length", name)


def _check_count(b: Budget, args: tuple, kwargs: dict, key: str, name: str) -> None:
    """The size a method or filter `name` is asked to produce by its argument `key`, when an int."""
    count = _width_arg(args, kwargs, key)
    if isinstance(count, int):
        b.fits(count, f"{name}({count})")


def check_replace(b: Budget, s: Any, old: Any, new: Any) -> None:
    if isinstance(s, str) and isinstance(old, str) and isinstance(new, str):
        hits = len(s) + 1 if not old else s.count(old)
        b.fits(len(s) + hits * max(len(new) - len(old), 0), "replace()")


# ---- filters ------------------------------------------------------------------------------

# Filters that do not turn their arguments into text: their arguments are not measured (a long
# conversation may pass through |length or |selectattr many times).
_STRUCTURAL = frozenset({
    "attr", "batch", "count", "d", "default", "dictsort", "first", "groupby", "items", "last", "length",
    "list", "map", "max", "min", "random", "reject", "rejectattr", "reverse", "select", "selectattr",
    "slice", "sort", "tojson", "unique",
})


def _counted(b: Budget, items: Any, what: str) -> list:
    out, size = [], 0
    for item in items:
        size += deep_size(item, b.limits.max_template_chars)
        b.fits(size, what)
        out.append(item)
    return out


def _filter_precheck(b: Budget, name: str, args: tuple, kwargs: dict) -> tuple:
    """Checks a filter's arguments before it runs; returns them (join's items as a list)."""
    value = args[0] if args else None
    rest = args[1:]
    if name == "center":
        _check_count(b, rest, kwargs, "width", name)
    elif name == "indent":
        width = _width_arg(rest, kwargs, "width")
        lines = value.count("\n") + 1 if isinstance(value, str) else 1
        pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        b.fits(len(b.text(value)) + max(pad, 0) * lines, f"indent({width!r})")
    elif name == "format":
        check_printf(b, value, tuple(rest) if rest else kwargs)
    elif name == "batch":
        _check_count(b, rest, kwargs, "linecount", name)
    elif name == "slice":
        _check_count(b, rest, kwargs, "slices", name)
    elif name == "replace" and len(rest) >= 2:
        check_replace(b, b.text(value), rest[0], rest[1])
    elif name == "join":
        # Its items may come from a generator: counted as they come, refused before the join.
        return (_counted(b, value, "join()"),) + tuple(rest)
    elif name == "sum":
        start = kwargs.get("start", rest[1] if len(rest) > 1 else 0)
        if isinstance(start, (list, tuple, str)):
            b.sized([start, value], "sum()")
    return args


def guard_filter(name: str, func: Callable) -> Callable:
    """``func`` with the budget's checks before it runs and on what it returns."""
    skip = 0 if getattr(func, "jinja_pass_arg", None) is None else 1

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        b = current()
        b.clock()
        user = _filter_precheck(b, name, args[skip:], kwargs)
        args = args[:skip] + user
        if name not in _STRUCTURAL:
            b.sized([list(user), kwargs], f"the arguments of |{name}")
        out = func(*args, **kwargs)
        if isinstance(out, (str, bytes, list, tuple, dict, int)):
            b.sized(out, f"the result of |{name}")
        return out

    return guarded


def tojson(value: Any, ensure_ascii: bool = False, indent: Any = None, separators: Any = None,
           sort_keys: bool = False) -> str:
    """json.dumps as transformers' tojson calls it, built piece by piece so that a huge result is
    refused before it exists."""
    b = current()
    if isinstance(indent, int):
        b.fits(indent, f"tojson(indent={indent})")
    elif isinstance(indent, str):
        b.fits(len(indent), "tojson(indent=...)")
    b.sized(value, "tojson()")  # refuses deeply shared structures before the slower encoding below
    encoder = json.JSONEncoder(ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)
    pieces, size = [], 0
    for piece in encoder.iterencode(value):
        size += len(piece)
        if size > b.limits.max_template_chars:
            b.fits(size, "tojson()")
        pieces.append(piece)
    return "".join(pieces)


def lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """jinja2's lorem-ipsum global, refused when it would be too long."""
    from jinja2.utils import generate_lorem_ipsum

    b = current()
    if isinstance(n, int) and isinstance(max, int):
        b.fits(n * max * 16, f"lipsum({n}, max={max})")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


# ---- the template-side hooks ----------------------------------------------------------------

def _loop(iterable: Any) -> Iterable[Any]:
    b = current()
    for item in iterable:
        b.tick()
        yield item


def install(env: Any) -> None:
    """Hooks the budget into a jinja2 sandboxed environment: its loops, output, ``~``, filters
    and the lorem-ipsum global (binops, calls and str.format are hooked by its class, see
    :func:`environment_class`)."""
    from jinja2 import nodes, pass_context
    from jinja2.compiler import CodeGenerator
    from jinja2.visitor import NodeTransformer

    def _filter(node: Any, name: str) -> Any:
        return nodes.Filter(node, name, [], [], None, None, lineno=node.lineno)

    class Wrap(NodeTransformer):
        def visit_For(self, node: Any) -> Any:
            node = self.generic_visit(node)
            node.iter = _filter(node.iter, "_llmos_loop")
            return node

        def visit_Output(self, node: Any) -> Any:
            node = self.generic_visit(node)
            node.nodes = [_filter(child, "_llmos_emit") for child in node.nodes]
            return node

        def visit_Concat(self, node: Any) -> Any:
            node = self.generic_visit(node)
            return _filter(nodes.List(node.nodes, lineno=node.lineno), "_llmos_concat")

    class BudgetedCodeGenerator(CodeGenerator):
        def visit_Template(self, node: Any, frame: Any = None) -> None:
            super().visit_Template(Wrap().visit(node), frame)

    # pass_context keeps them from being folded into constants at compile time.
    @pass_context
    def emit(_context: Any, value: Any) -> str:
        b = current()
        return b.emit(b.text(value))

    @pass_context
    def concat(_context: Any, parts: list) -> str:
        b = current()
        out = "".join(b.text(p) for p in parts)
        b.fits(len(out), "a ~ concatenation")
        return out

    @pass_context
    def loop(_context: Any, iterable: Any) -> Iterable[Any]:
        return _loop(iterable)

    for name, func in list(env.filters.items()):
        env.filters[name] = guard_filter(name, func)
    env.filters["tojson"] = tojson
    env.filters["_llmos_loop"] = loop
    env.filters["_llmos_emit"] = emit
    env.filters["_llmos_concat"] = concat
    env.globals["lipsum"] = lipsum
    env.code_generator_class = BudgetedCodeGenerator


def environment_class(base: type) -> type:
    """``base`` (a sandboxed environment class) with the budget on binops, calls and str.format."""
    from jinja2.runtime import LoopContext

    class BudgetedEnvironment(base):  # type: ignore[misc, valid-type]
        intercepted_binops = frozenset(base.intercepted_binops | {"*", "**", "+", "%"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            check_binop(current(), operator, left, right)
            out = super().call_binop(context, operator, left, right)
            if isinstance(out, int) and not isinstance(out, bool):
                current().int_bits(out.bit_length(), f"the result of {operator}")
            return out

        def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
            b = current()
            b.clock()
            if isinstance(__obj, LoopContext) and args:  # a recursive loop's next level
                args = (_loop(args[0]),) + args[1:]
            check_method(b, __obj, args, kwargs)
            out = super().call(__context, __obj, *args, **kwargs)
            if isinstance(out, (str, bytes, list, tuple, dict, int)):
                b.sized(out, "the result of a call")
            return out

        def wrap_str_format(self, value: Any) -> Any:
            fmt = super().wrap_str_format(value)
            if fmt is None:
                return None
            owner = value.__self__

            @functools.wraps(fmt)
            def checked(*args: Any, **kwargs: Any) -> str:
                b = current()
                if value.__name__ == "format_map":
                    check_format(b, owner, (), dict(args[0]) if args and isinstance(args[0], dict) else {})
                else:
                    check_format(b, owner, args, kwargs)
                return fmt(*args, **kwargs)

            return checked

    return BudgetedEnvironment
