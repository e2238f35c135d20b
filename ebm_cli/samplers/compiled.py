"""Compiled transitions: a sampler's whole step in one torch.compile graph (``compile`` key).

Eager PyTorch pays ~10 µs of dispatch per op whatever its size, and an HMC leapfrog is ~30 ops,
so on cheap energies dispatch is the whole cost. A sampler that declares ``Compilable`` splits
its step in three:

    state = prepare(energy_fn, state)      eager: fills in what a lazy state lacks (E, ∇E)
    draws = draws(state, generator)        eager: every random number of the step, in the order
                                           the step has always drawn them
    state', info = kernel(energy, state, draws)   pure: no generator, no host sync

``step`` is exactly kernel(prepare, draws) with ``EagerEnergy``, so the eager path is today's
step, bit for bit. ``CompiledTransitions`` is the energy as the samplers see it with
``compile`` on (build.py): a module that calls the plain energy (the trainer's loss, restarts,
plots stay eager) and runs ``kernel`` in one ``torch.compile(fullgraph=True, dynamic=False)``
graph with E and ∇ₓE inside it (``torch.func.grad_and_value`` over ``functional_call``). The
parameters are graph *inputs*, so an MLE update that changes θ does not recompile; the draws
come from the explicit generator outside the graph (dynamo refuses a torch.Generator), so a
compiled run makes the same draws and decisions as an eager one and resumes like it.

What compiles, and when: one graph per sampler object and shape, from its first transition,
except a sampler marked ``transient``: warm-up's per-step tuned samplers (a new ε every step,
adaptation.StepSizeAdaptation.tuned) run eager, and the fixed sampler warm-up returns is
compiled (compiling each ε would cost a compile per step). A run resumed from a checkpoint
compiles the same graphs at the same points, so it continues exactly. What recompiles: a new
sampler object (new ε, L, mass), a new chain count or event shape, a state that lacks its
gradient where the kernel reads it. An energy that cannot be traced (a user's class with
data-dependent Python control flow) or a graph that fails to build makes the module fall back
to eager for the rest of the run, with one log line saying why (never a failed run).

k transitions per call: a trainer that runs k steps per update (MLE's ``sampler_steps``) calls
``run_transitions``. For a sampler that declares ``DrawsAhead`` (its draws read only shapes,
so the draws of k steps can be made before the first: ULA, MALA, random-walk and independence
MH; not HMC, whose graph of k transitions would unroll k·L leapfrog steps, nor the kinetic
samplers, which draw a velocity only where the state has none), compiled transitions run the
k kernels in chunks of at most ``MAX_FUSED`` as one graph each: the draws are the same numbers
in the same order as k eager steps, and each graph call's fixed cost (the wrapper and the
inductor call; dynamo's frame evaluation is skipped, see ``_Graph``) is paid once per chunk,
not once per step.
"""

from __future__ import annotations

import functools
import logging
import time
import types
import warnings
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, TypeVar, runtime_checkable

import torch
from torch import Tensor, nn

from ebm_cli.samplers.base import add_scaled, energy_and_grad, energy_only

log = logging.getLogger("ebm_cli")
# dynamo traces through base._ones's lru_cache (a constant vector of ones): nothing to report
warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`",
                        category=UserWarning)


class EnergyCalls(Protocol):
    """What a kernel may evaluate: E(x) [B] and (E(x) [B], ∇ₓE(x) [B, *event]), detached."""

    def energy(self, x: Tensor) -> Tensor: ...

    def energy_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]: ...


class EagerEnergy(NamedTuple):
    """EnergyCalls of a module, eagerly (base.energy_only / base.energy_and_grad)."""

    module: nn.Module

    def energy(self, x: Tensor) -> Tensor:
        return energy_only(self.module, x)

    def energy_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return energy_and_grad(self.module, x)


class FunctionalEnergy(NamedTuple):
    """EnergyCalls of a module at given parameters and buffers (traceable: torch.func)."""

    module: nn.Module
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]

    def energy(self, x: Tensor) -> Tensor:
        return torch.func.functional_call(self.module, (self.params, self.buffers), (x,))

    def energy_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        def total(y: Tensor) -> tuple[Tensor, Tensor]:
            e = self.energy(y)  # [B]
            return e.sum(), e  # chains are independent: ∇ Σ_b E(x_b) is each chain's gradient

        grad, (_, e) = torch.func.grad_and_value(total, has_aux=True)(x)
        return e, grad


@runtime_checkable
class Compilable(Protocol):
    """A sampler whose step splits into prepare / draws / kernel (module docstring).

    ``kernel`` must be pure: it reads ``state`` and ``draws`` (tuples of tensors, or None where
    a draw does not apply) and the sampler's fields, modifies none of them, draws nothing and
    never synchronises with the host.
    """

    def prepare(self, energy_fn: nn.Module, state: Any) -> Any: ...

    def draws(self, state: Any, generator: torch.Generator) -> tuple[Tensor | None, ...]: ...

    def kernel(self, energy: EnergyCalls, state: Any, draws: Any) -> tuple[Any, Any]: ...


@runtime_checkable
class DrawsAhead(Compilable, Protocol):
    """A Compilable whose k transitions may run as one graph (``run_transitions``).

    The declaration: ``draws`` reads a state's shapes, dtypes and device only (never its
    values, nor which fields are set), and ``prepare`` leaves a state its ``kernel`` returned
    as it is; so the k draws made one after another from the first state are the draws k
    eager steps make. ``draws_ahead`` returns them, in order (``sequential_draws``).
    """

    def draws_ahead(self, state: Any, generator: torch.Generator, k: int) -> list[Any]: ...


def sequential_draws(sampler: Compilable, state: Any, generator: torch.Generator, k: int
                     ) -> list[Any]:
    """[sampler.draws(state, generator) for each of k steps]: a DrawsAhead's draws_ahead."""
    return [sampler.draws(state, generator) for _ in range(k)]


MAX_FUSED = 8  # transitions per graph: compile time grows with it, the per-call saving does not


def fused_chunks(steps: int) -> list[int]:
    """steps split into ⌈steps / MAX_FUSED⌉ near-equal chunks (at most two sizes, so at most
    two graphs): 40 -> [8] * 5, 10 -> [5, 5], 3 -> [3]."""
    n = -(-steps // MAX_FUSED)
    base, extra = divmod(steps, n)
    return [base + 1] * extra + [base] * (n - extra)


def run_transitions(sampler: Compilable, energy_fn: nn.Module, state: Any,
                    generator: torch.Generator, steps: int) -> tuple[Any, list[Any]]:
    """``steps`` transitions from ``state``: (last state, their ``steps`` Infos in order).

    ``sampler.step`` after step, except with compiled transitions (energy_fn a
    CompiledTransitions, not fallen back) and a DrawsAhead sampler that is not transient:
    then chunks of ``fused_chunks(steps)`` transitions, each one compiled graph
    (CompiledTransitions.transitions), with the same draws in the same order.
    """
    if (steps > 1 and isinstance(energy_fn, CompiledTransitions) and energy_fn.fallback is None
            and isinstance(sampler, DrawsAhead) and not is_transient(sampler)):
        infos: list[Any] = []
        for k in fused_chunks(steps):
            state = sampler.prepare(energy_fn, state)
            state, more = energy_fn.transitions(sampler, state,
                                                sampler.draws_ahead(state, generator, k))
            infos.extend(more)
        return state, infos
    infos = []
    for _ in range(steps):
        state, info = sampler.step(energy_fn, state, generator)
        infos.append(info)
    return state, infos


def run_kernel(sampler: Compilable, energy_fn: nn.Module, state: Any, draws: Any
               ) -> tuple[Any, Any]:
    """sampler.kernel on ``energy_fn``: compiled when energy_fn is a CompiledTransitions,
    eager otherwise. What every Compilable sampler's ``step`` ends with."""
    if isinstance(energy_fn, CompiledTransitions):
        return energy_fn.transition(sampler, state, draws)
    return sampler.kernel(EagerEnergy(energy_fn), state, draws)


def add_scaled_traceable(x: Tensor, v: Tensor, a: float | Tensor) -> Tensor:
    """x + a·v: base.add_scaled (one kernel) eagerly, and a product then a sum inside a graph.

    TorchInductor 2.13's post-grad addmm fusion rewrites add(mm(·), inp, alpha=a) as
    addmm(inp, ·) and drops a (measured: torch.add(x, a @ b, alpha=-0.01) compiled differs by
    5.3 on [8, 2]); a ∇ₓE through a linear layer or a dense mass's product is such an mm.
    """
    if torch.compiler.is_compiling() and not isinstance(a, Tensor):
        return x + v * a
    return add_scaled(x, v, a)


def _kernel(sampler: Compilable, module: nn.Module, params: dict[str, Tensor],
            buffers: dict[str, Tensor], state: Any, draws: Any) -> tuple[Any, Any]:
    """The function compiled for one sampler: its kernel with the energy at (params, buffers)."""
    return sampler.kernel(FunctionalEnergy(module, params, buffers), state, draws)


def _kernels(sampler: Compilable, module: nn.Module, params: dict[str, Tensor],
             buffers: dict[str, Tensor], state: Any, draws: list[Any]) -> tuple[Any, list[Any]]:
    """len(draws) kernels one after another (the function compiled for a chunk): (last
    state, the Infos in order)."""
    energy = FunctionalEnergy(module, params, buffers)
    infos = []
    for d in draws:
        state, info = sampler.kernel(energy, state, d)
        infos.append(info)
    return state, infos


def _eager_kernels(sampler: Compilable, module: nn.Module, state: Any, draws: list[Any]
                   ) -> tuple[Any, list[Any]]:
    """_kernels, eagerly (a chunk after a fallback)."""
    infos = []
    for d in draws:
        state, info = sampler.kernel(EagerEnergy(module), state, d)
        infos.append(info)
    return state, infos


def _bound(fn: Callable[..., Any], sampler: object, module: nn.Module, name: str
           ) -> Callable[..., Any]:
    """fn(sampler, module, params, buffers, state, draws) as a function of the last four, with
    a code object of its own named ``name`` (what torch.compile compiles for one entry).

    Dynamo keeps compiled graphs, their guards and the recompile limit (8) per code object, and
    compiles a ``functools.partial`` through one shared wrapper: with that, every sampler
    object of the process (each job of a sweep launched in-process, each evaluation sampler)
    added an entry to one cache, each call checked the guards of the entries before its own
    (measured 197 -> 274 µs per RW-MH step over 8 samplers) and the 9th sampler hit the limit
    and ran eager. A code object per entry gives each its own cache.
    """
    def call(params: dict[str, Tensor], buffers: dict[str, Tensor], state: Any, draws: Any
             ) -> Any:
        return fn(sampler, module, params, buffers, state, draws)

    return types.FunctionType(call.__code__.replace(co_name=name), call.__globals__, name,
                              None, call.__closure__)


def _graphs() -> int:
    """Graphs dynamo has compiled in this process so far (to time what a call compiled)."""
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


_TRANSIENT: dict[int, weakref.ref] = {}  # id -> the sampler: samplers used for one transition
S = TypeVar("S")


def transient(sampler: S) -> S:
    """Mark a sampler as used for one transition only (warm-up's tuned samplers): compiled
    transitions run it eager instead of compiling a graph for it. Returns the sampler."""
    key = id(sampler)
    _TRANSIENT[key] = weakref.ref(sampler)
    weakref.finalize(sampler, _TRANSIENT.pop, key, None)
    return sampler


def is_transient(sampler: object) -> bool:
    """Whether ``transient`` marked this sampler object."""
    ref = _TRANSIENT.get(id(sampler))
    return ref is not None and ref() is sampler


class _Graph:
    """One function compiled for the calls it gets: (fn(*args), whether this call compiled).

    mode None: ``torch.compile(fn).aot_compile`` per input signature (shapes, dtypes, devices,
    grad mode: dynamo's own guards, checked with ``guard_check``), the compiled function then
    called directly. That skips dynamo's per-call frame evaluation, measured at 70–120 µs of a
    CPU step's 180–640 µs (1024 chains, two_gaussians RW-MH to HMC L = 10). A mode (e.g.
    CUDA graphs), or a function aot_compile refuses: plain torch.compile, dynamo on each call.
    """

    def __init__(self, fn: Callable[..., Any], mode: str | None) -> None:
        self.fn = fn
        self.dynamo = None if mode is None else self._compiled(mode)
        self.variants: list[Any] = []  # AOTCompiledFunction, one per input signature

    def _compiled(self, mode: str | None = None) -> Callable[..., Any]:
        return torch.compile(self.fn, fullgraph=True, dynamic=False, mode=mode)

    def __call__(self, *args: Any) -> tuple[Any, bool]:
        if self.dynamo is not None:
            before = _graphs()
            return self.dynamo(*args), _graphs() > before
        for variant in self.variants:
            if variant.guard_check(*args):
                return variant.fn(*args), False
        try:
            variant = self._aot_compile(args)
        except Exception as e:  # anything aot_compile refuses: dynamo's ordinary path
            log.debug("compile: %s runs through dynamo (%s)", self.fn.__name__, _first_line(e))
            self.dynamo = self._compiled()
            return self(*args)
        self.variants.append(variant)
        return variant.fn(*args), True

    def _aot_compile(self, args: tuple[Any, ...]) -> Any:
        """torch.compile(fn).aot_compile for these args, tracing a second time after a
        TensorifyScalarRestartAnalysis (a 0-d CPU tensor such as an adapted ε: the first trace
        marks it to specialise, as dynamo's own restart does, which aot_compile does not)."""
        compiled = self._compiled()
        try:
            return compiled.aot_compile((args, {}))
        except torch._dynamo.exc.TensorifyScalarRestartAnalysis:
            return compiled.aot_compile((args, {}))


class _Entry:
    """One sampler object's compiled functions: its kernel (``fn``) and, by chunk length k,
    k kernels in one graph (``chunks``)."""

    def __init__(self, sampler: object) -> None:
        self.ref = weakref.ref(sampler)
        self.fn: _Graph | None = None
        self.chunks: dict[int, _Graph] = {}


class CompiledTransitions(nn.Module):
    """The energy E_θ as samplers see it with compiled transitions (module docstring).

    ``forward`` is the plain module's (same parameters: the optimizer, checkpoints and every
    caller outside a sampler's kernel see the plain energy). mode: a torch.compile mode
    (None / "default", "max-autotune-no-cudagraphs"). ``seconds_compile``: wall seconds spent
    in the calls that compiled a graph (trace, codegen and that one call). ``fallback``: why
    transitions run eager (None while they compile).
    """

    def __init__(self, energy_fn: nn.Module, mode: str | None = None) -> None:
        super().__init__()
        self.energy_fn = energy_fn
        self.mode = None if mode in (None, "default") else mode
        self.seconds_compile = 0.0
        self.graphs = 0
        self.fallback: str | None = None
        self._entries: dict[int, _Entry] = {}

    def forward(self, x: Tensor) -> Tensor:
        return self.energy_fn(x)

    def __getattr__(self, name: str) -> Any:
        """The wrapped energy's attributes (``sigmas``, ``conditioned``, ``event_shape``, …), as
        torch.compile's wrapper gives them: what an energy declares, it still declares."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.energy_fn, name)

    def _entry(self, sampler: object) -> _Entry:
        key = id(sampler)
        entry = self._entries.get(key)
        if entry is None or entry.ref() is not sampler:
            entry = self._entries[key] = _Entry(sampler)
            weakref.finalize(sampler, self._entries.pop, key, None)
        return entry

    def transition(self, sampler: Compilable, state: Any, draws: Any) -> tuple[Any, Any]:
        """sampler.kernel(state, draws), compiled (eager for a transient sampler, or after a
        fallback)."""
        if self.fallback is not None or is_transient(sampler):
            return sampler.kernel(EagerEnergy(self.energy_fn), state, draws)
        entry = self._entry(sampler)
        if entry.fn is None:
            kernel = _bound(_kernel, sampler, self.energy_fn,
                            f"kernel_{type(sampler).__name__}_{id(entry):x}")
            entry.fn = _Graph(kernel, self.mode)
        return self._call(entry.fn, state, draws, functools.partial(
            sampler.kernel, EagerEnergy(self.energy_fn)))

    def transitions(self, sampler: DrawsAhead, state: Any, draws: list[Any]
                    ) -> tuple[Any, list[Any]]:
        """len(draws) kernels one after another in one compiled graph (one per sampler object
        and chunk length): (last state, the Infos in order); eager after a fallback."""
        if self.fallback is not None or is_transient(sampler):
            return _eager_kernels(sampler, self.energy_fn, state, draws)
        entry = self._entry(sampler)
        fn = entry.chunks.get(len(draws))
        if fn is None:
            kernels = _bound(_kernels, sampler, self.energy_fn,
                             f"kernels{len(draws)}_{type(sampler).__name__}_{id(entry):x}")
            fn = entry.chunks[len(draws)] = _Graph(kernels, self.mode)
        return self._call(fn, state, draws, functools.partial(
            _eager_kernels, sampler, self.energy_fn))

    def _call(self, fn: _Graph, state: Any, draws: Any, eager: Callable[[Any, Any], Any]
              ) -> Any:
        """fn(params, buffers, state, draws) without autograd, timing what compiles; on any
        failure the fallback: eager(state, draws) now and eager transitions from here on."""
        params = {k: v.detach() for k, v in self.energy_fn.named_parameters()}
        buffers = {k: v.detach() for k, v in self.energy_fn.named_buffers()}
        start = time.perf_counter()
        try:
            with torch.no_grad():
                out, compiled = fn(params, buffers, state, draws)
        except Exception as e:  # untraceable energy, no compiler, a failed graph: run eager
            self.fallback = f"{type(e).__name__}: {_first_line(e)}"
            log.warning("compile: transitions run eager from here on, the sampler's step could "
                        "not be compiled (%s)", self.fallback)
            return eager(state, draws)
        if compiled:
            self.seconds_compile += time.perf_counter() - start
            self.graphs += 1
        return out


def _first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message, at most 160 characters."""
    for line in str(e).splitlines():
        if line.strip():
            return line.strip()[:160]
    return "no message"


def compile_seconds(energy_fn: nn.Module) -> float | None:
    """Seconds spent compiling transitions for energy_fn (None: not a CompiledTransitions)."""
    return energy_fn.seconds_compile if isinstance(energy_fn, CompiledTransitions) else None
