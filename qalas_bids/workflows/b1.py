"""B1+ preparation workflow: relative B1 on the QALAS grid, clipped, masked."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.b1 import B1ToQalas
from ..qalas.b1map import B1_RANGE


def b1_node_inputs(b1_source, flip_angle_override: float | None) -> dict:
    """Static inputs of :class:`B1ToQalas` for a :class:`~qalas_bids.bids.B1Source`.

    TurboFLASH: the famp image and its nominal flip angle (override > famp sidecar
    ``FlipAngle``). Ready ``TB1map``: relative map (``Units`` percent -> scale 0.01).
    """
    meta = dict(b1_source.metadata or {})
    if b1_source.kind == "tfl":
        angle = flip_angle_override if flip_angle_override is not None else meta.get("FlipAngle")
        return {"in_file": b1_source.files["famp"], "relative": False, "flip_angle": float(angle)}
    units = str(meta.get("Units", "")).lower()
    scale = 0.01 if units in ("percent", "%") else 1.0
    return {"in_file": b1_source.files["map"], "relative": True, "scale": scale}


def init_b1_wf(*, b1_source, flip_angle: float | None = None, name: str = "b1_wf"):
    """Bring the paired B1+ map into QALAS space.

    Relative B1 = famp / (10 * nominal flip angle), resampled with both affines (linear,
    nilearn), clipped to [0.65, 1.35] and set to 0 outside the head mask.

    Parameters
    ----------
    b1_source : :class:`qalas_bids.bids.b1_pairing.B1Source` of the run
    flip_angle : nominal flip angle override (degrees), ``--b1-flip-angle``

    Inputs
    ------
    qalas_file : 4D QALAS image (target grid)
    mask_file : head mask on the QALAS grid

    Outputs
    -------
    b1_file : relative B1 in QALAS space
    b1_info : coverage/clipping summary
    """
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = (
        "The TurboFLASH B1+ map was converted to relative B1 (measured flip angle divided by "
        "the nominal one), resampled into QALAS space using both images' affines (linear "
        f"interpolation, nilearn), clipped to [{B1_RANGE[0]}, {B1_RANGE[1]}] and masked "
        "outside the head."
    )
    inputnode = pe.Node(niu.IdentityInterface(fields=["qalas_file", "mask_file"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["b1_file", "b1_info"]), name="outputnode")
    to_qalas = pe.Node(B1ToQalas(**b1_node_inputs(b1_source, flip_angle)), name="b1_to_qalas",
                       mem_gb=1.0)
    workflow.connect([
        (inputnode, to_qalas, [("qalas_file", "qalas_file"), ("mask_file", "mask_file")]),
        (to_qalas, outputnode, [("out_file", "b1_file"), ("info", "b1_info")]),
    ])
    return workflow
