"""AST rewriting of attention forwards, and the shape check of gated-MLP forwards.

The attention rewrite works on the parsed source of the class's own ``forward`` instead of
whitespace-exact strings, so one mechanism covers every spelling in transformers: the
projection wrapped by ``q_norm``/``k_norm``, gated queries that chunk the q output,
``.view(hidden_shape)`` with or without a transpose, and the older ``bsz, q_len`` forms.

For separate q/k/v projections, one statement::

    _lk_q, _lk_k, _lk_v = _lk_apply_qkv(self, hidden_states, q=..., k=..., v=...)

is inserted before the first statement that uses a projection, and each ``self.q_proj(x)``
call is replaced by its result. Hoisting the calls is the only change in evaluation order,
so the rewrite insists that the three calls sit in straight-line code (not under an ``if``)
and that their common argument is not reassigned in between. A fused ``self.qkv_proj(x)``
and the ``self.o_proj(y)`` call are substituted in place by a single-projection call, which
never changes the order of evaluation.
"""

from __future__ import annotations
import __future__

import ast
import copy
import functools
import inspect
import linecache
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from types import FunctionType

import transformers

from ._errors import SourceMismatchError

_QKV_HELPER = "_lk_apply_qkv"
_SINGLE_HELPER = "_lk_apply_single"
_RESULTS = ("_lk_q", "_lk_k", "_lk_v")
_COMPOUND = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith, ast.Try)
# Only the __future__ flags matter when recompiling; others come from the code object itself.
_FUTURE_FLAGS = functools.reduce(
    lambda acc, name: acc | getattr(__future__, name).compiler_flag, __future__.all_feature_names, 0
)


@dataclass(frozen=True)
class AttentionRewrite:
    """Which projections of an attention forward to route through lk-autograd.

    ``qkv`` names three separate projections, ``fused_qkv`` one projection whose output the
    forward splits itself; at most one of them is set. ``o`` names the output projection.
    """

    qkv: tuple[str, str, str] | None = None
    fused_qkv: str | None = None
    o: str | None = None

    def __bool__(self) -> bool:
        return bool(self.qkv or self.fused_qkv or self.o)


def _mismatch(cls: type, looked_for: str, detail: str) -> SourceMismatchError:
    return SourceMismatchError(
        f"{cls.__module__}.{cls.__qualname__}.forward (transformers {transformers.__version__}) "
        f"no longer matches: looked for {looked_for}; {detail}. The installed transformers "
        "changed this class; pin a verified transformers version, or update the ArchSpec and "
        "check it with `uv run tools/verify_arch.py <model_type>`."
    )


def _parse_forward(cls: type) -> tuple[FunctionType, ast.FunctionDef]:
    """The undecorated forward function and its parsed definition (decorators included)."""
    function = inspect.unwrap(cls.forward)
    try:
        source = textwrap.dedent(inspect.getsource(function))
    except (OSError, TypeError) as error:
        raise _mismatch(cls, "the source of forward", f"it is unavailable ({error})") from error
    definition = ast.parse(source).body[0]
    if not isinstance(definition, ast.FunctionDef):
        raise _mismatch(cls, "a `def forward`", "the source is not a plain function definition")
    return function, definition


def _self_calls(node: ast.AST, name: str) -> list[ast.Call]:
    """Every ``self.<name>(...)`` call under ``node``."""
    return [
        call
        for call in ast.walk(node)
        if isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == name
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == "self"
    ]


def _assigned_names(statement: ast.stmt) -> set[str]:
    """Names a statement (re)binds, including walrus targets inside it."""
    names = set()
    for node in ast.walk(statement):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


class _Substitute(ast.NodeTransformer):
    """Replace given Call nodes (by identity) with new expressions."""

    def __init__(self, replacements: dict[int, ast.expr]):
        self.replacements = replacements

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if id(node) in self.replacements:
            return self.replacements[id(node)]
        return self.generic_visit(node)


def _single_call(function_name: str, projection: str, call: ast.Call) -> ast.Call:
    """``<function_name>(self, <args of call>, o="<projection>")``."""
    return ast.Call(
        func=ast.Name(function_name, ast.Load()),
        args=[ast.Name("self", ast.Load()), *call.args],
        keywords=[ast.keyword("o", ast.Constant(projection))],
    )


def _rewrite_qkv(cls: type, definition: ast.FunctionDef, names: tuple[str, str, str]) -> dict:
    """Insert the fused q/k/v statement; return the Call replacements to make."""
    body = definition.body
    looked_for = " / ".join(f"`self.{name}(hidden_states)`" for name in names)
    located = []  # (statement index, call) per projection
    for name in names:
        hits = [
            (index, call)
            for index, statement in enumerate(body)
            for call in _self_calls(statement, name)
        ]
        if len(hits) != 1:
            raise _mismatch(cls, looked_for, f"found {len(hits)} calls of self.{name}")
        index, call = hits[0]
        if isinstance(body[index], _COMPOUND):
            raise _mismatch(cls, looked_for, f"self.{name} is called inside a conditional block")
        if len(call.args) != 1 or call.keywords or isinstance(call.args[0], ast.Starred):
            raise _mismatch(cls, looked_for, f"self.{name} is not called with one argument")
        located.append((index, call))
    arguments = {ast.dump(call.args[0]) for _, call in located}
    argument = located[0][1].args[0]
    if len(arguments) != 1 or not isinstance(argument, ast.Name):
        raise _mismatch(cls, looked_for, "the projections do not share one input variable")
    first = min(index for index, _ in located)
    last = max(index for index, _ in located)
    for statement in body[first:last]:
        if argument.id in _assigned_names(statement):
            raise _mismatch(cls, looked_for, f"`{argument.id}` is reassigned between the calls")
    fused = ast.Assign(
        targets=[ast.Tuple([ast.Name(result, ast.Store()) for result in _RESULTS], ast.Store())],
        value=ast.Call(
            func=ast.Name(_QKV_HELPER, ast.Load()),
            args=[ast.Name("self", ast.Load()), copy.deepcopy(argument)],
            keywords=[
                ast.keyword(key, ast.Constant(name)) for key, name in zip("qkv", names, strict=True)
            ],
        ),
    )
    body.insert(first, fused)
    return {
        id(call): ast.Name(result, ast.Load())
        for (_, call), result in zip(located, _RESULTS, strict=True)
    }


def _rewrite_single(cls: type, definition: ast.FunctionDef, name: str) -> dict:
    """Replacements routing every ``self.<name>(x)`` through the single-projection helper."""
    calls = _self_calls(definition, name)
    if not calls:
        raise _mismatch(cls, f"`self.{name}(...)`", "there is no such call")
    for call in calls:
        if len(call.args) != 1 or call.keywords or isinstance(call.args[0], ast.Starred):
            raise _mismatch(cls, f"`self.{name}(x)`", "it is not called with one argument")
    return {id(call): _single_call(_SINGLE_HELPER, name, call) for call in calls}


@functools.cache
def rewritten_forward(
    cls: type,
    rewrite: AttentionRewrite,
    apply_qkv: Callable,
    apply_single: Callable,
) -> FunctionType:
    """``cls.forward`` with the projections in ``rewrite`` routed through the helpers.

    ``apply_qkv(self, X, q=, k=, v=) -> (Q, K, V)`` and ``apply_single(self, X, o=) -> Y``
    are bound as closure variables, so the module's namespace is not touched; the function
    runs against the original module's globals, so later monkeypatches of module-level
    helpers (e.g. Liger's RoPE) still apply. Cached per class and rewrite: binding the same
    function to every layer keeps patching cheap and makes repeated patches identical.
    """
    function, definition = _parse_forward(cls)
    replacements = {}
    if rewrite.qkv:
        replacements.update(_rewrite_qkv(cls, definition, rewrite.qkv))
    if rewrite.fused_qkv:
        replacements.update(_rewrite_single(cls, definition, rewrite.fused_qkv))
    if rewrite.o:
        replacements.update(_rewrite_single(cls, definition, rewrite.o))
    definition = _Substitute(replacements).visit(definition)
    # A factory makes the helpers, and `__class__` for zero-argument super(), closure cells.
    source = (
        f"def _lk_factory(__class__, {_QKV_HELPER}, {_SINGLE_HELPER}):\n"
        + textwrap.indent(ast.unparse(ast.fix_missing_locations(definition)), "    ")
        + f"\n    return {definition.name}\n"
    )
    filename = f"<lk_patch {cls.__module__}.{cls.__qualname__}.forward {rewrite}>"
    # linecache makes tracebacks and inspect.getsource show the rewritten code.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(
        source,
        filename,
        "exec",
        flags=function.__code__.co_flags & _FUTURE_FLAGS,
        dont_inherit=True,
    )
    namespace: dict = {}
    exec(code, function.__globals__, namespace)
    patched = namespace["_lk_factory"](cls, apply_qkv, apply_single)
    patched.__qualname__ = function.__qualname__
    return patched


def check_attention(cls: type, rewrite: AttentionRewrite) -> None:
    """Raise SourceMismatchError unless ``rewrite`` applies to ``cls.forward``."""
    _, definition = _parse_forward(cls)
    if rewrite.qkv:
        _rewrite_qkv(cls, definition, rewrite.qkv)
    if rewrite.fused_qkv:
        _rewrite_single(cls, definition, rewrite.fused_qkv)
    if rewrite.o:
        _rewrite_single(cls, definition, rewrite.o)


@dataclass(frozen=True)
class GatedMLP:
    """What a gated-MLP forward computes: ``down(act(gate(x)) * up(x))``.

    For a fused ``gate_up`` projection (Phi-3), ``gate`` and ``up`` are the two halves of
    ``gate_up(x).chunk(2, dim=-1)`` and ``gate_up`` names the projection.
    """

    down: str
    activation: str
    gate: str | None = None
    up: str | None = None
    gate_up: str | None = None


class _Inline(ast.NodeTransformer):
    """Replace loads of local names by the expressions last assigned to them."""

    def __init__(self, values: dict[str, ast.expr]):
        self.values = values

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id in self.values:
            return copy.deepcopy(self.values[node.id])
        return node


def _symbolic_return(definition: ast.FunctionDef) -> ast.expr | None:
    """The returned expression with straight-line local assignments inlined, if simple."""
    values: dict[str, ast.expr] = {}
    for statement in definition.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # docstring
        if isinstance(statement, ast.Return) and statement.value is not None:
            return _Inline(values).visit(statement.value)
        if not isinstance(statement, ast.Assign) or len(statement.targets) != 1:
            return None
        target, value = statement.targets[0], _Inline(values).visit(statement.value)
        if isinstance(target, ast.Name):
            values[target.id] = value
        elif isinstance(target, ast.Tuple) and all(isinstance(n, ast.Name) for n in target.elts):
            for position, name in enumerate(target.elts):
                values[name.id] = ast.Subscript(value, ast.Constant(position), ast.Load())
        else:
            return None
    return None


def _self_call(node: ast.AST, argument: ast.AST | None = None) -> str | None:
    """``name`` if ``node`` is ``self.name(argument)`` (any single argument if None)."""
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "self"
        and len(node.args) == 1
        and not node.keywords
    ):
        return None
    if argument is not None and ast.dump(node.args[0]) != ast.dump(argument):
        return None
    return node.func.attr


def _chunk_half(node: ast.AST, x: ast.expr) -> tuple[str, int] | None:
    """``(gate_up, i)`` if ``node`` is ``self.gate_up(x).chunk(2, dim=-1)[i]``."""
    if not (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)):
        return None
    chunk = node.value
    if not (
        isinstance(chunk, ast.Call)
        and isinstance(chunk.func, ast.Attribute)
        and chunk.func.attr == "chunk"
        and [ast.dump(a) for a in chunk.args] == [ast.dump(ast.Constant(2))]
        and len(chunk.keywords) == 1
        and chunk.keywords[0].arg == "dim"
        and ast.unparse(chunk.keywords[0].value) == "-1"
    ):
        return None
    name = _self_call(chunk.func.value, x)
    return (name, node.slice.value) if name else None


def gated_mlp_form(cls: type) -> GatedMLP:
    """Read ``cls.forward`` and return the gated MLP it computes, or raise SourceMismatchError.

    Binding an MLP to the fused kernel asserts that its forward is exactly
    ``down(act(gate(x)) * up(x))``; this checks that from the source (locals inlined,
    either operand order) instead of trusting the class name.
    """
    looked_for = "`return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))`"
    _, definition = _parse_forward(cls)
    arguments = definition.args.args
    expression = _symbolic_return(definition)
    if len(arguments) != 2 or expression is None:
        raise _mismatch(cls, looked_for, "forward is not a straight-line function of one input")
    x = ast.Name(arguments[1].arg, ast.Load())
    down = _self_call(expression)
    product = expression.args[0] if down else None
    if not (isinstance(product, ast.BinOp) and isinstance(product.op, ast.Mult)):
        raise _mismatch(cls, looked_for, "its result is not down(<product>)")
    for activated, other in ((product.left, product.right), (product.right, product.left)):
        activation = _self_call(activated)
        if not activation:
            continue
        inner = activated.args[0]
        gate, up = _self_call(inner, x), _self_call(other, x)
        if gate and up:
            return GatedMLP(down=down, activation=activation, gate=gate, up=up)
        gate_half, up_half = _chunk_half(inner, x), _chunk_half(other, x)
        if gate_half and up_half and gate_half[0] == up_half[0] and gate_half[1] < up_half[1]:
            return GatedMLP(down=down, activation=activation, gate_up=gate_half[0])
    raise _mismatch(cls, looked_for, "the product is not act(gate(x)) * up(x)")
