"""SSL-QALAS fitting: self-supervised training of the per-voxel network through the QALAS
signal model, in three modes.

- ``scan-specific``: train from scratch on this scan's masked voxels, then predict them;
- ``pretrained``: apply shipped (or user) weights, no training;
- ``fine-tune``: start from pretrained weights and train a few epochs on this scan.

Loss: mean squared difference between the measured magnitudes and the *magnitudes* of
the model signals ``|S_k(T1, T2, PD, IE; B1)|`` (the published code compared signed model
values with magnitude images, which makes voxels whose contrast crosses zero, e.g. CSF,
unfittable), both divided by one volume scale; optional total-variation term on the maps.
A voxel is an independent sample: training is mini-batch Adam over shuffled masked voxels
with an LR-on-plateau schedule and early stopping.

Optional (default on) per-voxel refinement: a few Levenberg-Marquardt steps on each
voxel's own least-squares problem, started from the network prediction. The network then
acts as an amortised initialiser and the final maps are per-voxel least-squares estimates
(what the CRLB describes); ``refine_steps=0`` returns the pure network output. The
``info`` dict says which was used.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import torch

from . import progress as prog
from .device import resolve_device
from ..errors import QalasInputError
from ..physics.bounds import IE_RANGE, T1_RANGE_S, T2_RANGE_S
from .network import NetworkConfig, QalasNet, network_inputs, robust_scale
from .pretrained import load_model
from .results import FitResult
from ..physics.signal_model import qalas_magnitude, voxelwise_jacobian
from ..physics.timing import SequenceTiming
from .voxel_inputs import validate_voxels

LOGGER = logging.getLogger("qalas_bids")

MODES = ("scan-specific", "pretrained", "fine-tune")
#: Default optimiser steps aimed for (epochs are derived from it and the voxel count).
TARGET_STEPS = {"scan-specific": 3000, "fine-tune": 600}
DEFAULT_BATCH = 8192
SCALE_PERCENTILE = 99.0


def model_magnitudes(params: torch.Tensor, b1: torch.Tensor, timing: SequenceTiming) -> torch.Tensor:
    """``|S_k|`` ``(N, 5)`` for ``params (N, 4)`` = T1 [s], T2 [s], PD, IE and ``b1 (N,)``."""
    return qalas_magnitude(params[:, 0], params[:, 1], params[:, 2], params[:, 3], b1, timing)


def signal_loss(params: torch.Tensor, targets: torch.Tensor, b1: torch.Tensor, timing,
                weight: torch.Tensor | None = None) -> torch.Tensor:
    """The self-supervised SSL-QALAS loss: mean squared difference between the model
    magnitudes of ``params (N, 4)`` (:func:`model_magnitudes`) and the normalised measured
    magnitudes ``targets (N, 5)``. ``timing``: one protocol, or one per voxel (fields ``(N,)``).
    ``weight`` (broadcast to ``(N, 5)``, e.g. ``1 / sigma^2`` per voxel when voxels come from
    scans of different noise levels) multiplies the squared residuals."""
    sq = (model_magnitudes(params, b1, timing) - targets).square()
    return (sq if weight is None else sq * weight).mean()


def _auto_batch(n: int, batch_size: int | None) -> int:
    if batch_size:
        return int(min(batch_size, n))
    return int(min(DEFAULT_BATCH, max(256, n // 8), n))


def _log(progress: bool, msg: str, *args: Any) -> None:
    LOGGER.log(logging.INFO if progress else logging.DEBUG, msg, *args)


def train_network(net: QalasNet, inputs: torch.Tensor, targets: torch.Tensor, b1: torch.Tensor,
                  timing: SequenceTiming, *, epochs: int, batch_size: int, lr: float = 1e-3,
                  tv_weight: float = 0.0, neighbors: torch.Tensor | None = None, seed: int = 0,
                  patience: int = 6, min_rel_improvement: float = 1e-3,
                  progress: bool = True) -> list[float]:
    """Self-supervised training of ``net`` on voxels; returns the per-epoch mean loss.

    ``targets`` are the normalised magnitudes ``(N, 5)``; ``neighbors (N, k)`` indices of
    each voxel's spatial neighbours (``-1`` = none) enable the TV term. Stops early when
    the epoch loss has not improved by ``min_rel_improvement`` for ``patience`` epochs.
    """
    n = inputs.shape[0]
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=2,
                                                           threshold=min_rel_improvement)
    use_tv = tv_weight > 0 and neighbors is not None
    span = net.span
    history: list[float] = []
    best, stale = math.inf, 0
    start = time.perf_counter()
    n_batches = math.ceil(n / batch_size)
    prog.phase("SSL training", total=epochs * n_batches, unit="batch")
    net.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator).to(inputs.device)
        total, count = 0.0, 0
        for first in range(0, n, batch_size):
            idx = order[first:first + batch_size]
            params = net(inputs[idx])
            loss = signal_loss(params, targets[idx], b1[idx], timing)
            if use_tv:
                nb = neighbors[idx]
                valid = nb >= 0
                if valid.any():
                    nb_params = net(inputs[nb[valid]])
                    own = params.unsqueeze(1).expand(-1, nb.shape[1], -1)[valid]
                    loss = loss + tv_weight * ((own - nb_params).abs() / span).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
            prog.step(epoch * n_batches + first // batch_size + 1, epoch=f"{epoch + 1}/{epochs}",
                      loss=total / count)
        epoch_loss = total / count
        history.append(epoch_loss)
        scheduler.step(epoch_loss)
        elapsed = time.perf_counter() - start
        eta = elapsed / (epoch + 1) * (epochs - epoch - 1)
        _log(progress, "SSL epoch %d/%d  loss %.3e  lr %.1e  elapsed %.0f s  ETA <= %.0f s",
             epoch + 1, epochs, epoch_loss, optimiser.param_groups[0]["lr"], elapsed, eta)
        if epoch_loss < best * (1 - min_rel_improvement):
            best, stale = epoch_loss, 0
        else:
            stale += 1
            if stale >= patience:
                _log(progress, "SSL early stop after %d epochs (loss plateau)", epoch + 1)
                break
    net.eval()
    return history


#: Voxels per network forward pass: on a CPU the 64-channel activations of a chunk should
#: stay in cache (2M voxels: 0.9 s with 32768, 2.5 s with 262144 on 2 cores).
PREDICT_CHUNK = {"cpu": 32768, "cuda": 1_048_576}


@torch.no_grad()
def predict(net: QalasNet, inputs: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Network parameters ``(N, 4)`` for ``inputs``, in chunks (no gradients)."""
    chunk = chunk or PREDICT_CHUNK["cuda" if inputs.device.type == "cuda" else "cpu"]
    net.eval()
    n = inputs.shape[0]
    prog.phase("SSL network prediction", total=n, unit="voxel")
    out = []
    for i in range(0, n, chunk):
        out.append(net(inputs[i:i + chunk]))
        prog.step(min(n, i + chunk))
    return torch.cat(out)


CONVERGED_RTOL = 1e-4  # relative cost decrease below which a voxel stops refining


def _model_from_log(q: torch.Tensor, b1: torch.Tensor, timing: SequenceTiming) -> torch.Tensor:
    """Magnitudes for parameters ``q = (log T1, log T2, log PD, IE)``."""
    return qalas_magnitude(q[:, 0].exp(), q[:, 1].exp(), q[:, 2].exp(), q[:, 3], b1, timing)


@torch.no_grad()
def refine_least_squares(params: torch.Tensor, targets: torch.Tensor, b1: torch.Tensor,
                         timing: SequenceTiming, *, steps: int = 8, pd_max: float,
                         t1_max: float = T1_RANGE_S[1], t2_max: float = T2_RANGE_S[1],
                         chunk: int = 262144) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-voxel Levenberg-Marquardt on ``||model(p) - targets||^2`` from ``params``.

    Works on (log T1, log T2, log PD, IE) within the fit ranges (:mod:`.bounds`; ``t1_max``,
    ``t2_max`` in seconds) and ``pd_max``; a step is kept
    only where it lowers that voxel's cost, so the result is never worse than the start.
    Returns the refined ``(N, 4)`` parameters and summary statistics.
    """
    lo = torch.tensor([math.log(T1_RANGE_S[0]), math.log(T2_RANGE_S[0]), math.log(1e-6), IE_RANGE[0]], dtype=params.dtype,
                      device=params.device)
    hi = torch.tensor([math.log(t1_max), math.log(t2_max), math.log(pd_max), 1.0], dtype=params.dtype,
                      device=params.device)
    out = torch.empty_like(params)
    cost_before, cost_after, unconverged = 0.0, 0.0, 0
    eye = torch.eye(4, dtype=params.dtype, device=params.device)
    n_chunks = math.ceil(params.shape[0] / chunk)
    prog.phase("per-voxel refinement", total=n_chunks * steps, unit="chunk-step")
    for first in range(0, params.shape[0], chunk):
        sl = slice(first, first + chunk)
        y, bb = targets[sl], b1[sl]

        p = params[sl]
        q = torch.stack([p[:, 0].log(), p[:, 1].log(), p[:, 2].log(), p[:, 3]], dim=1)
        q = torch.maximum(torch.minimum(q, hi), lo)
        cost = (_model_from_log(q, bb, timing) - y).square().sum(1)
        cost_before += float(cost.sum())
        lam = torch.full_like(cost, 1e-2)
        active = torch.arange(q.shape[0], device=q.device)
        for it in range(steps):
            prog.step(first // chunk * steps + it, active_voxels=int(active.numel()))
            if active.numel() == 0:
                break
            qa, ya, ba, ca, la = q[active], y[active], bb[active], cost[active], lam[active]
            value, jac = voxelwise_jacobian(lambda x: _model_from_log(x, ba, timing), qa)
            r = value - ya
            jtj = jac.transpose(1, 2) @ jac
            grad = (jac.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1)
            diag = torch.diagonal(jtj, dim1=1, dim2=2)
            damped = jtj + (la[:, None] * diag + 1e-10 * diag.sum(1, keepdim=True) + 1e-20).unsqueeze(-1) * eye
            delta, info = torch.linalg.solve_ex(damped, -grad)
            cand = torch.maximum(torch.minimum(qa + delta, hi), lo)
            new_cost = (_model_from_log(cand, ba, timing) - ya).square().sum(1)
            accept = (new_cost < ca) & (info == 0) & torch.isfinite(new_cost)
            q[active] = torch.where(accept[:, None], cand, qa)
            cost[active] = torch.where(accept, new_cost, ca)
            lam[active] = torch.where(accept, la / 3, la * 4).clamp(1e-6, 1e6)
            # Converged: an accepted step that lowered the cost by < CONVERGED_RTOL (far below
            # the noise), or a voxel whose damping hit the ceiling without progress.
            done = (accept & (ca - new_cost <= CONVERGED_RTOL * ca)) | (~accept & (la * 4 >= 1e6))
            active = active[~done]
        cost_after += float(cost.sum())
        unconverged += int(active.numel())
        out[sl] = torch.stack([q[:, 0].exp(), q[:, 1].exp(), q[:, 2].exp(), q[:, 3]], dim=1)
    n = max(params.shape[0], 1)
    return out, {"mean_cost_before": cost_before / n, "mean_cost_after": cost_after / n,
                 "unconverged_fraction": unconverged / n}


def _load_for_mode(model_path, timing: SequenceTiming, mode: str, dev, *, force_model: bool,
                   fallback: bool, warnings: list[str]):
    """``(LoadedModel, mode)``: the weights for ``pretrained``/``fine-tune``; ``pretrained``
    becomes ``fine-tune`` when the model was not trained for ``timing`` and ``fallback``."""
    if mode == "pretrained" and fallback and not force_model:
        try:
            return load_model(model_path, expected_timing=timing, device=dev), mode
        except QalasInputError as exc:
            warnings.append(f"{exc} -- fine-tuned on this scan instead (--pretrained-fallback)")
            LOGGER.warning(warnings[-1])
            return load_model(model_path, expected_timing=timing, force=True, device=dev), "fine-tune"
    return load_model(model_path, expected_timing=timing, force=force_model or mode == "fine-tune",
                      device=dev), mode


#: Voxels whose refined T1 is above this (s) are fluid-like: their likelihood is flat and
#: skewed along T1, and a refinement started from the network's T1 often ends in a
#: neighbouring local minimum (pure CSF at SNR 120: NRMSE 1.8 x the CRLB from the network
#: start, 1.3 x with a second start). They get a second start.
FLUID_T1_S = 2.0
#: The second start of a fluid-like voxel: the network's T1 times this factor.
FLUID_RESTART_T1_FACTOR = 0.5


def _cost(params: torch.Tensor, targets: torch.Tensor, b1: torch.Tensor, timing: SequenceTiming) -> torch.Tensor:
    return (model_magnitudes(params, b1, timing) - targets).square().sum(1)


@torch.no_grad()
def restart_fluid(refined: torch.Tensor, start: torch.Tensor, targets: torch.Tensor, b1: torch.Tensor,
                  timing: SequenceTiming, *, steps: int, pd_max: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Second refinement of fluid-like voxels (refined T1 > :data:`FLUID_T1_S`) from the
    network start ``start`` with T1 x :data:`FLUID_RESTART_T1_FACTOR`; per voxel the
    lower-cost result is kept (never worse). Returns the parameters and counts."""
    fluid = torch.nonzero(refined[:, 0] > FLUID_T1_S).squeeze(1)
    if fluid.numel() == 0:
        return refined, {"fluid_voxels": 0, "fluid_improved": 0}
    alt = start[fluid].clone()
    alt[:, 0] = alt[:, 0] * FLUID_RESTART_T1_FACTOR
    second, _ = refine_least_squares(alt, targets[fluid], b1[fluid], timing, steps=steps, pd_max=pd_max)
    better = _cost(second, targets[fluid], b1[fluid], timing) < _cost(refined[fluid], targets[fluid], b1[fluid], timing)
    out = refined.clone()
    out[fluid[better]] = second[better]
    return out, {"fluid_voxels": int(fluid.numel()), "fluid_improved": int(better.sum())}


def fit_ssl(
    magnitudes: np.ndarray,
    b1: np.ndarray | None,
    timing: SequenceTiming,
    *,
    mode: str = "scan-specific",
    device: str = "auto",
    seed: int = 0,
    model_path: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float = 1e-3,
    tv_weight: float = 0.0,
    use_b1_input: bool = True,
    progress: bool = True,
    refine_steps: int = 8,
    neighbors: np.ndarray | None = None,
    num_threads: int | None = None,
    force_model: bool = False,
    patience: int = 6,
    save_model_path: str | None = None,
    pretrained_fallback: bool = False,
    fluid_restart: bool = False,
) -> FitResult:
    """Fit T1 [s], T2 [s], PD [image units] and IE for ``magnitudes (N, 5)`` with SSL-QALAS.

    ``mode``: ``scan-specific`` | ``pretrained`` | ``fine-tune``. ``b1 (N,)`` relative B1
    (``None`` = 1, with a warning). ``epochs=None`` chooses enough epochs for about
    3000 (scan-specific) / 600 (fine-tune) optimiser steps; early stopping still applies.
    ``tv_weight > 0`` needs ``neighbors (N, k)`` (indices into the N voxels, -1 = none).
    ``refine_steps`` per-voxel Levenberg-Marquardt steps after the network (0 = off).
    ``num_threads`` caps torch CPU threads for this call. ``model_path`` = weights for
    pretrained/fine-tune (default: the shipped protocol-general model); ``force_model`` uses weights
    trained for another timing in ``pretrained`` mode. ``save_model_path`` writes the
    trained network (scan-specific/fine-tune) with :func:`~.pretrained.save_model`.
    ``pretrained_fallback``: in ``pretrained`` mode, fine-tune the model on this scan
    (recorded in the warnings) instead of refusing a timing it was not trained for.
    ``fluid_restart``: refine fluid-like voxels a second time from another start
    (:func:`restart_fluid`; off by default: on the 2 mm digital head it makes a pretrained
    run 2.7 x slower).
    Deterministic on CPU for a given ``seed`` and thread count.
    """
    if mode not in MODES:
        raise QalasInputError(f"unknown SSL mode {mode!r}: choose one of {MODES}")
    t_start = time.perf_counter()
    mags, b1v, warnings = validate_voxels(magnitudes, b1)
    dev = resolve_device(device)
    old_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        return _fit(mags, b1v, timing, warnings, t_start, dev, mode=mode, seed=seed,
                    model_path=model_path, epochs=epochs, batch_size=batch_size, lr=lr,
                    tv_weight=tv_weight, use_b1_input=use_b1_input, progress=progress,
                    refine_steps=refine_steps, neighbors=neighbors, force_model=force_model,
                    patience=patience, save_model_path=save_model_path,
                    pretrained_fallback=pretrained_fallback, fluid_restart=fluid_restart)
    finally:
        torch.set_num_threads(old_threads)


def _fit(mags, b1v, timing, warnings, t_start, dev, *, mode, seed, model_path, epochs,
         batch_size, lr, tv_weight, use_b1_input, progress, refine_steps, neighbors,
         force_model, patience, save_model_path, pretrained_fallback=False, fluid_restart=False) -> FitResult:
    from ... import __version__
    from .pretrained import save_model

    n = mags.shape[0]
    scale = robust_scale(mags, SCALE_PERCENTILE)
    dtype = torch.float32
    targets = torch.as_tensor(mags / scale, dtype=dtype, device=dev)
    b1_t = torch.as_tensor(b1v, dtype=dtype, device=dev)
    info: dict[str, Any] = {"method": mode, "device": str(dev), "n_voxels": int(n),
                            "input_scale": scale,
                            "input_normalisation": f"magnitudes / {SCALE_PERCENTILE:g}th percentile "
                                                   "of contrast 5 in the mask",
                            "seed": seed, "warnings": warnings}
    loaded, timing_input = None, None
    if mode in ("pretrained", "fine-tune"):
        loaded, mode = _load_for_mode(model_path, timing, mode, dev, force_model=force_model,
                                      fallback=pretrained_fallback, warnings=warnings)
        if mode != info["method"]:
            info.update(method=mode, pretrained_fallback="fine-tune")
        net = loaded.net
        timing_input = loaded.timing_input(timing)
        if mode == "fine-tune" and loaded.warnings:
            info["model_timing_note"] = "model trained for another timing; fine-tuning adapts it"
        else:
            warnings.extend(loaded.warnings)
        info["model"] = {"path": loaded.path, "sha256": loaded.sha256}
        if not use_b1_input and net.config.use_b1_input:
            warnings.append("use_b1_input=False ignored: the loaded model takes B1 as input")
        use_b1_input = net.config.use_b1_input
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = QalasNet(NetworkConfig(use_b1_input=use_b1_input)).to(dev)
    inputs = network_inputs(targets, b1_t, 1.0, use_b1_input, timing_input)
    info["use_b1_input"] = bool(use_b1_input)
    info["timing_input"] = timing_input is not None

    history: list[float] = []
    if mode in ("scan-specific", "fine-tune"):
        bs = _auto_batch(n, batch_size)
        steps_per_epoch = math.ceil(n / bs)
        n_epochs = epochs if epochs is not None else int(
            min(300, max(3, math.ceil(TARGET_STEPS[mode] / steps_per_epoch))))
        nb_t = None
        if tv_weight > 0:
            if neighbors is None:
                warnings.append("tv_weight ignored: no voxel neighbourhood given (use fit_volume)")
            else:
                nb_t = torch.as_tensor(np.asarray(neighbors), dtype=torch.long, device=dev)
        _log(progress, "SSL %s: %d voxels, batch %d, up to %d epochs on %s", mode, n, bs, n_epochs, dev)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            history = train_network(net, inputs, targets, b1_t, timing, epochs=n_epochs,
                                    batch_size=bs, lr=lr, tv_weight=tv_weight, neighbors=nb_t,
                                    seed=seed, patience=patience, progress=progress)
        info.update(batch_size=bs, max_epochs=n_epochs, lr=lr, tv_weight=tv_weight)
    info["epochs"] = len(history)
    info["loss_history"] = [float(v) for v in history]
    info["training_time_s"] = time.perf_counter() - t_start

    params = predict(net, inputs)
    if refine_steps > 0:
        t_ref = time.perf_counter()
        start = params
        params, stats = refine_least_squares(start, targets, b1_t, timing, steps=refine_steps,
                                             pd_max=net.config.pd_max)
        if fluid_restart:
            params, fluid_stats = restart_fluid(params, start, targets, b1_t, timing, steps=2 * refine_steps,
                                                pd_max=net.config.pd_max)
            stats.update(fluid_stats)
        info["refinement"] = {"method": "per-voxel Levenberg-Marquardt from the network prediction",
                              "steps": int(refine_steps), "time_s": time.perf_counter() - t_ref,
                              **stats}
        _log(progress, "SSL per-voxel refinement: mean cost %.3e -> %.3e",
             stats["mean_cost_before"], stats["mean_cost_after"])
    else:
        info["refinement"] = None
    params = params.detach().cpu().numpy().astype(np.float64)
    bad = ~np.isfinite(params).all(axis=1)
    if bad.any():  # should not happen with validated inputs; never hand NaN downstream
        warnings.append(f"{int(bad.sum())} voxels gave non-finite parameters and were set to 0")
        params[bad] = 0.0
    if save_model_path and mode != "pretrained":
        save_model(save_model_path, net, {
            "timing": timing.as_dict(),
            "input_normalisation": {"method": "percentile", "percentile": SCALE_PERCENTILE,
                                    "contrast": 5, "pd_units": "input scale"},
            "software_version": __version__,
            "training": {"kind": f"self-supervised ({mode})", "n_voxels": int(n), "seed": seed,
                         "lr": lr, "epochs": len(history)},
            "loss_history": info["loss_history"]})
        info["saved_model"] = str(save_model_path)
    info["wall_time_s"] = time.perf_counter() - t_start
    return FitResult(t1=params[:, 0].astype(np.float32), t2=params[:, 1].astype(np.float32),
                     pd=(params[:, 2] * scale).astype(np.float32), ie=params[:, 3].astype(np.float32),
                     method=mode, info=info)
