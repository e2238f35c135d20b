"""The final evaluation of a run: fresh chains of the fitted model and NLL/KL/MMD on held-out
data, or, for a sampling run, diagnostics of the chains themselves; figures of both."""

from __future__ import annotations

from typing import Any

import torch

from ebm_cli.build import Parts
from ebm_cli.energies.base import truth_of
from ebm_cli.evaluation.ais import evaluate_high_dim
from ebm_cli.evaluation.mmd import mmd
from ebm_cli.evaluation.sampling import ChainTrace, draw_samples, initial_points
from ebm_cli.evaluation.summary import evaluate
from ebm_cli.reporting.figures import plot
from ebm_cli.reporting.report import Reporter
from ebm_cli.trainers.base import StartsChains
from ebm_cli.trainers.buffer import DataNoise


def evaluate_model(cfg: dict[str, Any], parts: Parts, reporter: Reporter,
                    gen: torch.Generator, cpu_gen: torch.Generator, device: torch.device,
                    dtype: torch.dtype) -> tuple[dict[str, float], torch.Tensor]:
    """A fitted model: fresh chains of the configured sampler (with independence-MH restarts when
    eval.restarts), then NLL/KL/MMD on held-out data."""
    ev = cfg["eval"]
    train_x = parts.dataset.train.to(device=device, dtype=dtype)
    if parts.dataset.dim != 2 and isinstance(parts.trainer, StartsChains):  # D > 2: eval
        x0 = parts.trainer.noise.sample(ev["n_samples"], cpu_gen)  # chains start there too
    else:
        x0 = initial_points(ev["n_samples"], parts.dataset.bounds, train_x, cpu_gen)
    restarts = None
    if ev["restarts"] and not parts.dataset.is_image:  # a Gaussian proposal never fits images
        restarts = DataNoise(train_x, "gaussian", 1.0, "eval.restarts")
    trace = ChainTrace()  # a thinned part of the chains, for their convergence diagnostics
    with reporter.timed("chains", detail=f"{ev['n_samples']} chains, {ev['warmup']} warm-up + "
                        f"{ev['sampler_steps']} steps"):
        samples, accept = draw_samples(
            parts.fast_energy_fn, parts.sampler, x0.to(device=device, dtype=dtype),
            ev["warmup"], ev["sampler_steps"], gen, restarts, trace,
        )
    metrics = evaluate(parts.energy_fn, parts.dataset, samples.detach(), ev["grid"],
                       ev["mmd_points"], cpu_gen, reporter.timed)
    metrics["eval_acceptance_rate"] = float(accept)
    with reporter.timed("diagnostics", detail="the evaluation chains' R-hat and ESS"):
        metrics.update(trace.metrics())  # eval_rhat_max, …, eval_converged
    ds = parts.dataset
    if ds.dim != 2:  # no quadrature: log Z by annealed importance sampling (+ image metrics)
        with reporter.timed("ais", detail=f"{ev['ais_chains']} chains, {ev['ais_steps']} "
                            "temperatures, forward and reverse"):
            metrics.update(evaluate_high_dim(
                parts.energy_fn, ds, samples.detach(), gen, ev["ais_chains"],
                ev["ais_steps"],
            ))
    if ds.transform is not None and "test_nll" in metrics:  # standardised 2-D data
        metrics["test_nll_original_units"] = metrics["test_nll"] + ds.log_scale
    with reporter.timed("figures"):
        plot(reporter, parts, samples, parts.steps, final=True)
    return metrics, samples


def evaluate_chains(cfg: dict[str, Any], parts: Parts, reporter: Reporter,
                     cpu_gen: torch.Generator) -> tuple[dict[str, float], torch.Tensor]:
    """Sampling only: diagnostics of the chains themselves (ESS, R-hat, errors vs the truth)."""
    trainer, energy_fn = parts.trainer, parts.energy_fn
    samples = trainer.negatives()
    with reporter.timed("diagnostics", detail="ESS, R-hat, errors vs the truth"):
        metrics = trainer.diagnostics()
    truth = truth_of(energy_fn)
    sample_exact = truth.sample
    if sample_exact is not None:
        n = min(samples.shape[0], cfg["eval"]["mmd_points"])
        with reporter.timed("mmd"):
            exact = sample_exact(n, torch.Generator(device=samples.device).manual_seed(
                cfg["seed"]))
            metrics["mmd"] = float(mmd(samples[:n].flatten(1).double(),
                                       exact.flatten(1).double()))
    sets = {k: (a.detach().cpu().double().flatten(1).numpy(),
                b.detach().cpu().double().flatten(2).numpy())
            for k, (a, b) in trainer.chain_sets().items()}
    with reporter.timed("figures"):
        from ebm_cli.reporting import plots  # matplotlib loads where a figure is drawn

        if samples[0].numel() == 2:
            start = next(iter(sets.values()))[0]
            box = truth.bounds or ((-3.0, 3.0), (-3.0, 3.0))  # then grown to hold the chains
            box = plots.covering_box(box, start)
            runs = {k: trace for k, (_, trace) in sets.items()}
            fig = plots.chains_figure(energy_fn, start, runs, box)
            reporter.figure("chains", fig, parts.steps, "samples.png")
        trace = trainer.trace_array().detach().cpu().double().flatten(2).numpy()
        reporter.figure("trace", plots.trace_figure(trace), parts.steps, "trace.png")
    return metrics, samples
