"""B1+ preparation workflow: relative B1 on the QALAS grid, clipped, masked."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..bids.inputs_check import b1_node_inputs
from ..interfaces.b1 import B1ToQalas
from ..qalas.b1map import B1_RANGE, DEFAULT_MIN_COVERAGE


def init_b1_wf(*, b1_source, flip_angle: float | None = None,
               min_coverage: float = DEFAULT_MIN_COVERAGE, name: str = "b1_wf"):
    """Bring the paired B1+ map into QALAS space.

    Relative B1 = famp / (10 * nominal flip angle), resampled with both affines (linear,
    nilearn), clipped to [0.65, 1.35] and set to 0 outside the head mask.

    Parameters
    ----------
    b1_source : :class:`qalas_bids.bids.b1_pairing.B1Source` of the run
    flip_angle : nominal flip angle override (degrees), ``--b1-flip-angle``
    min_coverage : smallest head fraction the B1 map must cover, ``--b1-min-coverage``

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
    to_qalas = pe.Node(B1ToQalas(**b1_node_inputs(b1_source, flip_angle, min_coverage)), name="b1_to_qalas",
                       mem_gb=1.0)
    workflow.connect([
        (inputnode, to_qalas, [("qalas_file", "qalas_file"), ("mask_file", "mask_file")]),
        (to_qalas, outputnode, [("out_file", "b1_file"), ("info", "b1_info")]),
    ])
    return workflow
