"""Dictionary matching of QALAS magnitudes (the baseline fit of the SSL-QALAS paper).

Atoms are the model magnitudes ``|S_1..S_5|`` (PD = 1) on a grid of T1, T2 and inversion
efficiency (IE), for each of 100 B1 bins. A voxel's B1 is known, so only the atoms of its
B1 bin are searched: the winner is the atom with the largest inner product with the
measured magnitudes after L2-normalising the atom, and PD is the least-squares scale
``<s, a> / ||a||^2``.

The paper's grid (:func:`paper_grid`) has ~3.5 M atoms per B1 bin after dropping the
physically impossible atoms with T2 > T1. Two searches are offered:

``"brute"``
    Exhaustive: every valid atom of the voxel's bin (batched matmul, chunked over voxels
    and atoms; atoms are built one B1 bin at a time). Exact, but ~N x 3.5 M inner
    products: fine on a GPU or for a few thousand voxels on a CPU.
``"coarse-to-fine"`` (default for the paper grid)
    1. brute-force match against a coarse sub-grid (~30 log-spaced T1, ~24 log-spaced T2,
       6 IE values, all points of the full grid);
    2. local pattern search on the full grid: starting from the coarse winner, evaluate the
       3 x 3 x 3 neighbours at a per-dimension index stride that starts at half the coarse
       spacing and halves each level (reach = the coarse spacing), then polish at stride 1
       until no neighbour is better. Candidates are evaluated on the fly with the signal
       model, so only ~200 atoms per voxel are computed.
    The result is the full-grid argmax whenever the refinement neighbourhood contains the
    global maximum, which holds for smooth, unimodal score landscapes (noiseless or
    moderately noisy data); see ``benchmarks/bench_dictionary.py`` for the measured
    agreement with the exhaustive search.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import progress as prog
from ..physics.bounds import T1_RANGE_S, T2_RANGE_S
from .device import resolve_device
from ..errors import QalasInputError
from .results import FitResult
from ..physics.signal_model import qalas_magnitude
from ..physics.timing import SequenceTiming
from .voxel_inputs import validate_voxels

LOGGER = logging.getLogger("qalas_bids")

B1_RANGE = (0.65, 1.35)
N_B1_BINS = 100


def _segment(start: float, stop: float, step: float) -> np.ndarray:
    """Values ``start, start+step, ... <= stop`` (inclusive, rounded to 1e-9 s)."""
    n = int(math.floor((stop - start) / step + 1e-6)) + 1
    return np.round(start + step * np.arange(n), 9)


@dataclass(frozen=True)
class DictionaryGrid:
    """Parameter grid of a dictionary (T1, T2 in seconds; IE and B1 unitless).

    ``b1_edges`` delimit the B1 bins; atoms of a bin are computed at its centre.
    """

    t1: np.ndarray
    t2: np.ndarray
    ie: np.ndarray
    b1_edges: np.ndarray = field(default_factory=lambda: np.linspace(*B1_RANGE, N_B1_BINS + 1))
    name: str = "custom"

    def __post_init__(self) -> None:
        for attr in ("t1", "t2", "ie", "b1_edges"):
            values = np.asarray(getattr(self, attr), dtype=np.float64)
            if values.ndim != 1 or values.size < 1 or not np.all(np.isfinite(values)):
                raise ValueError(f"dictionary grid {attr} must be a non-empty 1-D finite array")
            if values.size > 1 and np.any(np.diff(values) <= 0):
                raise ValueError(f"dictionary grid {attr} must be strictly increasing")
            object.__setattr__(self, attr, values)
        if self.t1[0] <= 0 or self.t2[0] <= 0:
            raise ValueError("dictionary grid T1/T2 values must be positive (seconds)")
        if self.b1_edges.size < 2:
            raise ValueError("dictionary grid needs at least two B1 bin edges")

    @property
    def b1_centres(self) -> np.ndarray:
        return 0.5 * (self.b1_edges[:-1] + self.b1_edges[1:])

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.t1.size, self.t2.size, self.ie.size)

    def n_valid_atoms(self) -> int:
        """Atoms per B1 bin after dropping T2 > T1."""
        n_t2_ok = np.searchsorted(self.t2, self.t1, side="right")
        return int(n_t2_ok.sum()) * self.ie.size

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (seconds)."""
        def rng(v: np.ndarray) -> list[float]:
            return [float(v[0]), float(v[-1]), int(v.size)]
        return {
            "name": self.name,
            "t1_s": rng(self.t1), "t2_s": rng(self.t2), "ie": rng(self.ie),
            "b1_bins": [float(self.b1_edges[0]), float(self.b1_edges[-1]), int(self.b1_edges.size - 1)],
            "atoms_per_b1_bin": self.n_valid_atoms(),
            "dropped": "atoms with T2 > T1",
        }


def paper_grid() -> DictionaryGrid:
    """The SSL-QALAS paper's dictionary grid.

    T1 5 ms-3 s in 5 ms steps then 3.1-10 s in 100 ms steps (670 values); T2 1-349 ms in
    2 ms steps, 0.36-1 s in 20 ms steps, 1.2-5 s in 200 ms steps (228 values); IE 0.5-1.0
    in steps of 0.02 (26); B1 100 bins over 0.65-1.35. The paper stopped T1 at 5 s and T2
    at 2.5 s; the ends here are the app's ranges (:mod:`.bounds`), so noisy CSF is not
    clipped.
    """
    t1 = np.concatenate([_segment(0.005, 3.0, 0.005), _segment(3.1, T1_RANGE_S[1], 0.1)])
    t2 = np.concatenate([_segment(0.001, 0.349, 0.002), _segment(0.36, 1.0, 0.02),
                         _segment(1.2, T2_RANGE_S[1], 0.2)])
    ie = _segment(0.5, 1.0, 0.02)
    return DictionaryGrid(t1=t1, t2=t2, ie=ie, name="paper")


@dataclass
class Dictionary:
    """Atoms of a grid: ``atoms[b, m]`` = magnitudes (PD = 1) of atom ``m`` at B1 ``b1[b]``.

    ``t1``, ``t2``, ``ie`` are the ``(M,)`` parameters of the valid atoms (T2 <= T1) and
    ``index`` their ``(M, 3)`` grid indices.
    """

    grid: DictionaryGrid
    b1: torch.Tensor
    t1: torch.Tensor
    t2: torch.Tensor
    ie: torch.Tensor
    index: torch.Tensor
    atoms: torch.Tensor


def _valid_atom_index(t1: np.ndarray, t2: np.ndarray, n_ie: int) -> np.ndarray:
    """``(M, 3)`` indices into ``(t1, t2, ie)`` of all combinations with T2 <= T1."""
    i1, i2, i3 = np.meshgrid(np.arange(t1.size), np.arange(t2.size), np.arange(n_ie), indexing="ij")
    keep = t2[i2] <= t1[i1]
    return np.stack([i1[keep], i2[keep], i3[keep]], axis=-1)


def _atoms(t1: torch.Tensor, t2: torch.Tensor, ie: torch.Tensor, b1: float | torch.Tensor,
           timing: SequenceTiming) -> torch.Tensor:
    one = torch.ones((), dtype=t1.dtype, device=t1.device)
    b1 = torch.as_tensor(b1, dtype=t1.dtype, device=t1.device)
    with torch.no_grad():
        return qalas_magnitude(t1, t2, one, ie, b1, timing)


def build_dictionary(
    timing: SequenceTiming,
    grid: DictionaryGrid | str | None = None,
    device: str | torch.device = "auto",
    dtype: torch.dtype = torch.float32,
    b1: np.ndarray | list[float] | None = None,
) -> Dictionary:
    """Compute the atoms (magnitudes, PD = 1, not normalised) of ``grid``.

    ``grid`` defaults to :func:`paper_grid`; ``b1`` selects the B1 values (default: all
    bin centres). Memory is ``n_b1 x M x 5`` values: the full paper grid (100 bins x ~3.5 M
    atoms) needs ~7 GB in float32, so pass a few ``b1`` values or a smaller grid on a CPU.
    """
    grid = _resolve_grid(grid)
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    b1_values = grid.b1_centres if b1 is None else np.atleast_1d(np.asarray(b1, dtype=np.float64))
    index = _valid_atom_index(grid.t1, grid.t2, grid.ie.size)
    t1 = torch.as_tensor(grid.t1[index[:, 0]], dtype=dtype, device=dev)
    t2 = torch.as_tensor(grid.t2[index[:, 1]], dtype=dtype, device=dev)
    ie = torch.as_tensor(grid.ie[index[:, 2]], dtype=dtype, device=dev)
    atoms = torch.stack([_atoms(t1, t2, ie, float(b), timing) for b in b1_values])
    return Dictionary(grid=grid, b1=torch.as_tensor(b1_values, dtype=dtype, device=dev),
                      t1=t1, t2=t2, ie=ie, index=torch.as_tensor(index, device=dev), atoms=atoms)


def _resolve_grid(grid: DictionaryGrid | str | None) -> DictionaryGrid:
    if grid is None or (isinstance(grid, str) and grid == "paper"):
        return paper_grid()
    if isinstance(grid, DictionaryGrid):
        return grid
    raise QalasInputError(f"unknown dictionary grid {grid!r}: use None, 'paper' or a DictionaryGrid")


# --------------------------------------------------------------------------- matching
def _match_atoms(x: torch.Tensor, atoms: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best atom (index, score) of each row of ``x`` (N, 5) among ``atoms`` (M, 5).

    Score = <x, a> / ||a||. Chunked over voxels and atoms so that at most ``budget``
    scores exist at once.
    """
    norms = atoms.norm(dim=1).clamp_min(torch.finfo(atoms.dtype).tiny)
    unit = atoms / norms[:, None]
    n, m = x.shape[0], unit.shape[0]
    atom_chunk = min(m, max(1, budget // 64))
    voxel_chunk = max(1, min(n, budget // atom_chunk))
    best_score = torch.full((n,), -math.inf, dtype=x.dtype, device=x.device)
    best_index = torch.zeros((n,), dtype=torch.long, device=x.device)
    for v0 in range(0, n, voxel_chunk):
        xv = x[v0:v0 + voxel_chunk]
        bs, bi = best_score[v0:v0 + voxel_chunk], best_index[v0:v0 + voxel_chunk]
        for a0 in range(0, m, atom_chunk):
            score, idx = (xv @ unit[a0:a0 + atom_chunk].T).max(dim=1)
            better = score > bs
            bs[better] = score[better]
            bi[better] = idx[better] + a0
    return best_index, best_score


def _offsets(radius: int) -> torch.Tensor:
    r = range(-radius, radius + 1)
    return torch.tensor([[i, j, k] for i in r for j in r for k in r])


def _local_best(x: torch.Tensor, b1: torch.Tensor, idx: torch.Tensor, stride: torch.Tensor,
                offsets: torch.Tensor, values: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                timing: SequenceTiming) -> torch.Tensor:
    """Best grid point among ``idx + offsets * stride`` (clamped to the grid) per voxel."""
    t1v, t2v, iev = values
    upper = torch.tensor([t1v.numel() - 1, t2v.numel() - 1, iev.numel() - 1], device=x.device)
    cand = idx[:, None, :] + offsets[None] * stride[:, None, :]
    cand = torch.minimum(cand.clamp_min(0), upper)
    t1, t2, ie = t1v[cand[..., 0]], t2v[cand[..., 1]], iev[cand[..., 2]]
    mags = _atoms(t1, t2, ie, b1[:, None], timing)
    score = (mags * x[:, None, :]).sum(-1) / mags.norm(dim=-1).clamp_min(torch.finfo(mags.dtype).tiny)
    score = score.masked_fill(t2 > t1, -math.inf)
    return cand[torch.arange(idx.shape[0], device=x.device), score.argmax(dim=1)]


def _pattern_search(x: torch.Tensor, b1: torch.Tensor, start: torch.Tensor, stride: torch.Tensor,
                    values: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                    timing: SequenceTiming, max_steps: int = 200, max_moves: int = 4,
                    final_radius: int = 1) -> torch.Tensor:
    """Greedy grid search from ``start`` (N, 3) with per-dimension strides (N, 3).

    Each step moves to the best of the 3x3x3 neighbours at the current stride; the stride
    is halved when no neighbour is better or after ``max_moves`` moves at that stride, and
    a voxel stops when no neighbour is better at stride 1 (or after ``max_moves`` moves
    there). Optionally (``final_radius`` > 1) the (2r+1)^3 stride-1 neighbourhood is
    checked once more at the end.
    """
    small = _offsets(1).to(x.device)
    idx, stride = start.clone(), stride.clone()
    moves = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    active = torch.arange(x.shape[0], device=x.device)
    final_done = final_radius <= 1
    for _ in range(max_steps):
        if not active.numel():
            if final_done:
                break
            final_done = True
            best = _local_best(x, b1, idx, stride, _offsets(final_radius).to(x.device), values, timing)
            active = torch.nonzero((best != idx).any(dim=1)).flatten()
            idx = best
            continue
        best = _local_best(x[active], b1[active], idx[active], stride[active], small, values, timing)
        moved = (best != idx[active]).any(dim=1)
        at_unit = (stride[active] == 1).all(dim=1)
        idx[active] = best
        moves[active] = torch.where(moved, moves[active] + 1, 0)
        # Halve the stride where no neighbour was better (classic pattern search) or after
        # max_moves moves at this stride (bounds the walk on flat, noisy landscapes).
        halve = active[~moved | (moves[active] >= max_moves)]
        stride[halve] = (stride[halve] // 2).clamp_min(1)
        moves[halve] = 0
        active = active[(~at_unit | moved) & ~(at_unit & (moves[active] == 0))]
    return idx


def _coarse_positions(values: np.ndarray, n: int, log: bool) -> np.ndarray:
    """Indices (sorted, unique) of ``values`` nearest to ``n`` log/linear-spaced targets."""
    if values.size <= n:
        return np.arange(values.size)
    targets = (np.geomspace if log else np.linspace)(values[0], values[-1], n)
    pos = np.abs(values[None, :] - targets[:, None]).argmin(axis=1)
    return np.unique(np.concatenate([[0], pos, [values.size - 1]]))


def _initial_stride(coarse: np.ndarray, winner_pos: np.ndarray) -> np.ndarray:
    """Power-of-two stride = half the coarse spacing around each winner (fine-grid indices)."""
    left = np.where(winner_pos > 0, coarse[winner_pos] - coarse[np.maximum(winner_pos - 1, 0)], 0)
    right = np.where(winner_pos < coarse.size - 1,
                     coarse[np.minimum(winner_pos + 1, coarse.size - 1)] - coarse[winner_pos], 0)
    reach = np.maximum(np.maximum(left, right), 1)
    return 2 ** np.ceil(np.log2(np.maximum(reach / 2.0, 1.0))).astype(np.int64)


@dataclass(frozen=True)
class CoarseSpec:
    """Size of the coarse sub-grid of the coarse-to-fine search."""

    n_t1: int = 32
    n_t2: int = 24
    n_ie: int = 6


def fit_dictionary(
    magnitudes: np.ndarray,
    b1: np.ndarray | None,
    timing: SequenceTiming,
    *,
    device: str = "auto",
    grid: DictionaryGrid | str | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    search: str | None = None,
    coarse: CoarseSpec = CoarseSpec(),
) -> FitResult:
    """Dictionary-match ``magnitudes`` (N, 5) with known relative ``b1`` (N,).

    Parameters
    ----------
    grid : ``None`` (paper grid, coarse-to-fine search), ``"paper"`` (paper grid,
        exhaustive search) or a :class:`DictionaryGrid` (exhaustive unless ``search`` says
        otherwise).
    chunk_size : voxels per refinement batch (default 32768 on CPU, 1 M on CUDA); the
        exhaustive matmul holds at most ``chunk_size * 64`` scores at once.
    search : ``"brute"`` or ``"coarse-to-fine"`` to override the default for ``grid``.

    B1 is clipped to the grid's bin range and quantised to its bin centre (100 bins over
    0.65-1.35 for the paper grid). Returns float32 T1/T2 (s), PD (input units), IE.
    """
    t_start = time.perf_counter()
    mags, b1_arr, input_warnings = validate_voxels(magnitudes, b1)
    for warning in input_warnings:
        LOGGER.warning("Dictionary fit: %s.", warning)
    if search is None:
        search = "coarse-to-fine" if grid is None else "brute"
    if search not in ("brute", "coarse-to-fine"):
        raise QalasInputError(f"unknown dictionary search {search!r}: use 'brute' or 'coarse-to-fine'")
    grid = _resolve_grid(grid)
    dev = resolve_device(device)
    dtype = torch.float32  # global (matmul) stage
    fine = torch.float64  # local search and PD: float32 cosines cannot resolve near-ties
    if chunk_size is None:
        chunk_size = 1_048_576 if dev.type == "cuda" else 32_768
    chunk_size = max(1, int(chunk_size))
    budget = chunk_size * 64
    log = LOGGER.info if progress else LOGGER.debug

    n = mags.shape[0]
    lo, hi = grid.b1_edges[0], grid.b1_edges[-1]
    n_clipped = int(np.sum((b1_arr < lo) | (b1_arr > hi)))
    if n_clipped:
        LOGGER.warning("%d voxel(s) have B1 outside [%.2f, %.2f]: clipped to the dictionary range.",
                       n_clipped, lo, hi)
    b1_bin = np.clip(np.searchsorted(grid.b1_edges, np.clip(b1_arr, lo, hi), side="right") - 1,
                     0, grid.b1_edges.size - 2)
    b1_centres = grid.b1_centres
    x = torch.as_tensor(mags, dtype=dtype, device=dev)
    x_fine = torch.as_tensor(mags, dtype=fine, device=dev)
    values = tuple(torch.as_tensor(v, dtype=dtype, device=dev) for v in (grid.t1, grid.t2, grid.ie))
    values_fine = tuple(torch.as_tensor(v, dtype=fine, device=dev) for v in (grid.t1, grid.t2, grid.ie))
    idx_out = torch.zeros((n, 3), dtype=torch.long, device=dev)
    score_out = torch.zeros((n,), dtype=dtype, device=dev)

    match_index, pos = _match_index(grid, search, coarse, dev)
    a_t1, a_t2, a_ie = (values[d][match_index[:, d]] for d in range(3))
    log("Dictionary fit: %d voxels, grid %s (%d atoms per B1 bin), %s search on %s.",
        n, grid.name, grid.n_valid_atoms(), search, dev)

    t_build = _global_match(x, b1_bin, b1_centres, a_t1, a_t2, a_ie, match_index, idx_out, score_out,
                            timing, budget, search, log)
    t_coarse = time.perf_counter() - t_start

    # Local search in float64: from the coarse winner with halving strides, or (brute) a
    # stride-1 polish that only resolves float32 near-ties of the global matmul.
    b1_voxel = torch.as_tensor(b1_centres[b1_bin], dtype=fine, device=dev)
    _local_search(x_fine, b1_voxel, idx_out, pos, values_fine, timing, chunk_size, progress, log)

    t1_fit, t2_fit, ie_fit = (values_fine[d][idx_out[:, d]] for d in range(3))
    pd_fit = _pd_scale(x_fine, b1_voxel, t1_fit, t2_fit, ie_fit, timing, chunk_size)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    wall = time.perf_counter() - t_start
    info = {
        "method": "dictionary",
        "warnings": input_warnings,
        "search": search,
        "device": str(dev),
        "n_voxels": int(n),
        "n_atoms": grid.n_valid_atoms(),
        "n_atoms_matched": int(match_index.shape[0]),
        "grid": grid.describe(),
        "b1_quantisation": f"{grid.b1_edges.size - 1} bins over [{lo}, {hi}], atoms at bin centres",
        "b1_clipped_voxels": n_clipped,
        "wall_time_s": {"build": round(t_build, 3), "match": round(wall - t_build, 3),
                        "coarse": round(t_coarse, 3), "total": round(wall, 3)},
    }
    log("Dictionary fit done in %.1f s (%s).", wall, dev)
    as_np = lambda t: t.detach().cpu().numpy().astype(np.float32)  # noqa: E731
    return FitResult(t1=as_np(t1_fit), t2=as_np(t2_fit), pd=as_np(pd_fit), ie=as_np(ie_fit),
                     method="dictionary", info=info)


def _match_index(grid: DictionaryGrid, search: str, coarse: CoarseSpec,
                 dev: torch.device) -> tuple[torch.Tensor, list[np.ndarray] | None]:
    """Grid indices ``(M, 3)`` of the atoms of the global match, and the coarse positions
    along T1/T2/IE (``None`` for the brute-force search, which matches every valid atom)."""
    if search == "brute":
        return torch.as_tensor(_valid_atom_index(grid.t1, grid.t2, grid.ie.size), device=dev), None
    pos = [_coarse_positions(grid.t1, coarse.n_t1, True), _coarse_positions(grid.t2, coarse.n_t2, True),
           _coarse_positions(grid.ie, coarse.n_ie, False)]
    coarse_local = _valid_atom_index(grid.t1[pos[0]], grid.t2[pos[1]], pos[2].size)
    return torch.as_tensor(np.stack([pos[d][coarse_local[:, d]] for d in range(3)], axis=-1), device=dev), pos


def _global_match(x: torch.Tensor, b1_bin: np.ndarray, b1_centres: np.ndarray, a_t1: torch.Tensor,
                  a_t2: torch.Tensor, a_ie: torch.Tensor, match_index: torch.Tensor,
                  idx_out: torch.Tensor, score_out: torch.Tensor, timing: SequenceTiming,
                  budget: int, search: str, log) -> float:
    """Match every voxel against the atoms of its B1 bin (one batched matmul per bin).

    Writes the winners' grid indices into ``idx_out`` and their scores into ``score_out``;
    returns the seconds spent building atoms.
    """
    t_build = 0.0
    n, dev = x.shape[0], x.device
    order = np.argsort(b1_bin, kind="stable")
    bins, starts = np.unique(b1_bin[order], return_index=True)
    ends = np.append(starts[1:], n)
    next_report = 0.1
    prog.phase(f"dictionary {'coarse' if search != 'brute' else 'full'} match", total=len(bins), unit="B1 bin")
    for k, (b, s0, s1) in enumerate(zip(bins, starts, ends)):
        prog.step(k)
        t0 = time.perf_counter()
        atoms = _atoms(a_t1, a_t2, a_ie, float(b1_centres[b]), timing)
        t_build += time.perf_counter() - t0
        sel = torch.as_tensor(order[s0:s1], device=dev)
        best, score = _match_atoms(x[sel], atoms, budget)
        idx_out[sel] = match_index[best]
        score_out[sel] = score
        if (k + 1) / len(bins) >= next_report:
            log("Dictionary %s match: %d/%d B1 bins done.", "coarse" if search != "brute" else "full",
                k + 1, len(bins))
            next_report += 0.1
    return t_build


def _local_search(x_fine: torch.Tensor, b1_voxel: torch.Tensor, idx_out: torch.Tensor,
                  pos: list[np.ndarray] | None, values_fine: tuple[torch.Tensor, ...],
                  timing: SequenceTiming, chunk_size: int, progress: bool, log) -> None:
    """Pattern search around the global winners (in place on ``idx_out``), in float64.

    ``pos`` are the coarse grid positions (coarse-to-fine: halving strides from the coarse
    spacing) or ``None`` (brute force: stride 1, resolving float32 near-ties only).
    """
    n = x_fine.shape[0]
    dev = x_fine.device
    stride = np.ones((n, 3), dtype=np.int64)
    if pos is not None:
        idx_np = idx_out.cpu().numpy()
        for d in range(3):
            winner_pos = np.searchsorted(pos[d], idx_np[:, d])
            stride[:, d] = _initial_stride(pos[d], winner_pos)
    stride_t = torch.as_tensor(stride, device=dev)
    prog.phase("dictionary local search", total=n, unit="voxel")
    for c0 in range(0, n, chunk_size):
        prog.step(c0)
        sl = slice(c0, c0 + chunk_size)
        idx_out[sl] = _pattern_search(x_fine[sl], b1_voxel[sl], idx_out[sl], stride_t[sl], values_fine, timing)
        if progress and n > chunk_size:
            log("Dictionary local search: %d/%d voxels.", min(n, c0 + chunk_size), n)


def _pd_scale(x_fine: torch.Tensor, b1_voxel: torch.Tensor, t1_fit: torch.Tensor, t2_fit: torch.Tensor,
              ie_fit: torch.Tensor, timing: SequenceTiming, chunk_size: int) -> torch.Tensor:
    """PD = least-squares scale of the winning atom (unnormalised, PD = 1), float64."""
    n = x_fine.shape[0]
    pd_fit = torch.empty((n,), dtype=x_fine.dtype, device=x_fine.device)
    for c0 in range(0, n, chunk_size):
        sl = slice(c0, c0 + chunk_size)
        atom = _atoms(t1_fit[sl], t2_fit[sl], ie_fit[sl], b1_voxel[sl], timing)
        pd_fit[sl] = (atom * x_fine[sl]).sum(-1) / (atom * atom).sum(-1).clamp_min(1e-300)
    return pd_fit
