"""A verdict on a set of chains: the diagnostics, the one rule that makes them a ``converged``
flag, and the sentences the run summary prints.

The rule (``RULE``, also in the README): the chains have converged when

    max rank-normalised split R̂ < 1.01  and  max nested R̂ < 1.01
    and  min bulk ESS ≥ 100·K  and  min tail ESS ≥ 100·K,

over every diagnosed coordinate, where the chains are grouped into K = min(16, chains)
superchains of consecutive chains. A diagnostic that cannot be computed (NaN: e.g. a coordinate
in which no chain ever moved) fails the rule.

Why this rule. R̂ < 1.01 with bulk and tail ESS ≥ 100 per chain is the rule of Vehtari et al.
(2021) for a few long chains (4 chains: ESS ≥ 400). Here the chains are many, started
independently, and R̂ is what sees a chain that has not explored the target alone: with every
chain held in the mode it started in (the 0.25/0.75 mixture, modes 12 sd apart) bulk ESS stays
near 400 while R̂ is 1.3–4.5. Nested R̂ (Margossian et al. 2024) is R̂ over superchains; at
stationarity R̂_ν − 1 ≈ 1/(2·ESS per superchain), so < 1.01 asks for a superchain's mean to be
known to ~0.14 sd, and it fails when groups of chains drift together (as chains that share a
starting point do: the paper's nested design). It cannot replace R̂ here: for chains started
independently, chains stuck apart raise R̂_ν² − 1 by at most ~1/M (M chains per superchain),
however far apart they are. With ≥ 16 chains the ESS floor is 100 per superchain (1600), the
count of 100 per chain of Vehtari et al. carried to the superchain; R̂ < 1.01 already implies
more for chains that each mix. The rule is conservative for many short chains: a chain that
cannot explore alone in the recorded steps makes R̂ fail, and the note then says so (run more
steps).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping

import numpy as np
from torch import Tensor

from ebm_cli.evaluation.diagnostics import (
    as_draws,
    chain_diagnostics,
    ess_mean,
    ess_tail,
    nested_rhat,
)

RHAT_MAX = 1.01  # R̂ and nested R̂ must be below this
ESS_PER_SUPERCHAIN = 100  # bulk and tail ESS must reach this × K
MAX_SUPERCHAINS = 16  # K = min(16, chains)
MIN_DRAWS = 4  # per chain: fewer and R-hat / ESS are undefined (arviz returns NaN)
SWAP_RATE_PREFIX = "swap_rate"  # metrics keys (after a group prefix) of tempering swap rates
SWAP_SUMMARIES = ("_min", "_max", "_mean")  # swap_rate… keys that summarise the pairs' rates
SWAP_RATE_LOW = 0.05  # a neighbouring pair swapping less often than this splits the ladder

RULE = (f"converged when max rank-normalised split R-hat < {RHAT_MAX}, max nested R-hat < "
        f"{RHAT_MAX} and min bulk and tail ESS >= {ESS_PER_SUPERCHAIN} per superchain "
        f"(K = min({MAX_SUPERCHAINS}, chains) superchains of consecutive chains), over every "
        "diagnosed coordinate; an undefined (NaN) diagnostic fails")


def n_superchains(n_chains: int) -> int:
    """K = min(16, chains): the chain groups of nested R-hat and of the ESS floor."""
    return min(MAX_SUPERCHAINS, n_chains)


def convergence_metrics(trace: Tensor | np.ndarray) -> dict[str, float]:
    """The diagnostics and verdict of a trace [T, B, *event] (B ≥ 2 chains), as floats:

    rhat_max, nested_rhat_max, ess_bulk_min, ess_tail_min, ess_mean_min (ESS of the mean,
    not rank-normalised: the one that sets an average's Monte Carlo error), superchains (K)
    and converged (1.0 / 0.0 by ``is_converged``). Max/min over the flattened event. With fewer
    than ``MIN_DRAWS`` draws per chain only superchains and converged = 0.0.
    """
    a = as_draws(trace)
    k = n_superchains(a.shape[1])
    if a.shape[0] < MIN_DRAWS:  # nothing to judge by: no NaN diagnostics, just the verdict
        return {"superchains": float(k), "converged": 0.0}
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 of a constant coordinate: NaN
        metrics = _diagnose(a, k)
    metrics["converged"] = float(is_converged(metrics))
    return metrics


def _diagnose(a: np.ndarray, k: int) -> dict[str, float]:
    """The diagnostics of draws a [T, B, D] with k superchains (no verdict)."""
    out = chain_diagnostics(a)
    return {
        "rhat_max": _worst(out["rhat"], np.max),
        "nested_rhat_max": _worst(nested_rhat(a, k), np.max),
        "ess_bulk_min": _worst(out["ess_bulk"], np.min),
        "ess_tail_min": _worst(ess_tail(a), np.min),
        "ess_mean_min": _worst(ess_mean(a), np.min),
        "superchains": float(k),
    }


def _worst(values: np.ndarray, pick: Callable[[np.ndarray], np.floating]) -> float:
    """max / min over coordinates, NaN if any coordinate is NaN (an undefined diagnostic)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    return math.nan if np.isnan(v).any() else float(pick(v))


def failures(metrics: Mapping[str, float], prefix: str = "") -> list[str]:
    """What breaks the rule, one phrase per diagnostic (value and threshold); [] if converged.

    Reads ``{prefix}rhat_max``, ``nested_rhat_max``, ``ess_bulk_min``, ``ess_tail_min`` and
    ``superchains`` from ``metrics``; a missing or NaN value is undefined and fails (metrics.json
    leaves non-finite values out).
    """
    k = metrics.get(f"{prefix}superchains", math.nan)
    need = ESS_PER_SUPERCHAIN * k
    out = []
    for key, name in (("rhat_max", "R-hat"), ("nested_rhat_max", "nested R-hat")):
        v = metrics.get(prefix + key, math.nan)
        if not v < RHAT_MAX:  # NaN fails
            out.append(f"{name} {_show(v, '.4f')} (needs < {RHAT_MAX})")
    for key, name in (("ess_bulk_min", "bulk ESS"), ("ess_tail_min", "tail ESS")):
        v = metrics.get(prefix + key, math.nan)
        if not v >= need:
            out.append(f"{name} {_show(v, '.0f')} (needs >= {need:.0f} = {ESS_PER_SUPERCHAIN} "
                       f"× {k:.0f} superchains)")
    return out


def _show(v: float, spec: str) -> str:
    return "undefined" if math.isnan(v) else format(v, spec)


def is_converged(metrics: Mapping[str, float], prefix: str = "") -> bool:
    """The rule (``RULE``) on the diagnostics in ``metrics`` under ``prefix``."""
    return not failures(metrics, prefix)


def _groups(metrics: Mapping[str, float]) -> list[str]:
    """Prefixes of the chain sets in ``metrics``: "" (a sampling run), "eval_" (a trained
    model's evaluation chains), "HMC/" (one sampler of a comparison): every key that ends in
    ``converged`` names one (with its ``superchains``)."""
    prefixes = (k[: -len("converged")] for k in metrics if k.endswith("converged"))
    return sorted(p for p in prefixes if p + "superchains" in metrics)


def _who(prefix: str) -> str:
    if prefix == "":
        return "the chains"
    if prefix == "eval_":
        return "the evaluation chains"
    return f"the {prefix.rstrip('/_')} chains"


def convergence_notes(metrics: Mapping[str, float]) -> list[str]:
    """Sentences for the run summary: per chain set, whether it converged by ``RULE`` and, if
    not, which diagnostics say so (value and threshold); its divergent transitions
    (``{prefix}divergences``) and tempering swap rates (keys ``{prefix}swap_rate…``, one per
    neighbouring pair, those ending in _min/_max/_mean being summaries: the slowest pair named,
    and a warning below ``SWAP_RATE_LOW``)."""
    notes = []
    for p in _groups(metrics):
        who = _who(p)
        bad = failures(metrics, p)
        if not any(p + key in metrics for key in ("rhat_max", "ess_bulk_min")):
            notes.append(f"{who} cannot be judged: R-hat and ESS need at least {MIN_DRAWS} "
                         "draws per chain; not converged by the rule")
        elif not bad:
            notes.append(
                f"{who} have converged: R-hat {metrics[p + 'rhat_max']:.4f} and nested R-hat "
                f"{metrics[p + 'nested_rhat_max']:.4f} (< {RHAT_MAX}), bulk ESS "
                f"{metrics[p + 'ess_bulk_min']:.0f} and tail ESS "
                f"{metrics[p + 'ess_tail_min']:.0f} (>= "
                f"{ESS_PER_SUPERCHAIN * metrics[p + 'superchains']:.0f})")
        else:
            note = f"{who} have NOT converged: " + "; ".join(bad)
            rhat = metrics.get(p + "rhat_max", math.nan)
            if not rhat < RHAT_MAX and metrics.get(p + "nested_rhat_max", math.nan) < RHAT_MAX:
                note += (" — the superchains agree but each chain has not explored the target "
                         "alone (stuck in a mode, or too few steps): run more steps, or a "
                         "sampler that moves between modes")
            notes.append(note + "; what is computed from these chains' draws is not reliable")
        if f"{p}divergences" in metrics:
            n = metrics[f"{p}divergences"]
            if n > 0:
                notes.append(f"{who} had {n:.0f} divergent transitions after warm-up: "
                             "estimates near where they happen may be biased (a smaller step "
                             "size or a higher target_accept may help)")
            else:
                notes.append(f"{who} had no divergent transitions after warm-up")
    for p in [""] + [q for q in _groups(metrics) if q]:
        swaps = {k: v for k, v in metrics.items()
                 if k.startswith(p + SWAP_RATE_PREFIX) and not k.endswith(SWAP_SUMMARIES)
                 and math.isfinite(v)}
        if swaps:
            slowest = min(swaps, key=lambda k: swaps[k])
            note = (f"{_who(p)}: tempering swap rates {min(swaps.values()):.3g}–"
                    f"{max(swaps.values()):.3g} over {len(swaps)} neighbouring pairs "
                    f"(slowest {slowest})")
            if swaps[slowest] < SWAP_RATE_LOW:
                note += (f"; below {SWAP_RATE_LOW} the replicas hardly exchange, so the ladder "
                         "does not connect the modes (more temperatures may help)")
            notes.append(note)
    return notes
