"""Top-level workflows: all participants -> one participant -> one workflow per QALAS run."""
from __future__ import annotations

from collections import defaultdict

from nipype.pipeline import engine as pe

from .fit import init_qalas_wf


def workflow_base_name(version: str) -> str:
    """``qalas_bids_0_1_wf``: the work folder changes with the minor version (no stale reuse)."""
    major_minor = "_".join(version.split(".")[:2])
    return f"qalas_bids_{major_minor}_wf"


def init_qalas_bids_wf(*, settings, runs):
    """One sub-workflow per participant, run from ``settings.work_dir``.

    Parameters
    ----------
    settings : :class:`qalas_bids.config.Settings`
    runs : list of :class:`qalas_bids.bids.discovery.QalasRun` (from ``collect_qalas_runs``)
    """
    workflow = pe.Workflow(name=workflow_base_name(settings.version))
    workflow.base_dir = str(settings.work_dir)
    by_subject = defaultdict(list)
    for run in runs:
        by_subject[run.subject].append(run)
    for subject in sorted(by_subject):
        single = init_single_subject_wf(subject=subject, runs=by_subject[subject], settings=settings)
        single.config["execution"]["crashdump_dir"] = str(
            settings.output_dir / f"sub-{subject}" / "log" / settings.run_uuid)
        for node in single._get_all_nodes():
            node.config = single.config
        workflow.add_nodes([single])
    return workflow


def init_single_subject_wf(*, subject: str, runs, settings, name: str | None = None):
    """All QALAS runs (sessions x runs) of one participant, each processed independently."""
    workflow = pe.Workflow(name=name or f"sub_{subject}_wf")
    workflow.__desc__ = (
        f"Results included in this manuscript come from processing with qalas-bids "
        f"{settings.version}, based on nipype. {len(runs)} 3D-QALAS acquisition(s) of "
        f"participant {subject} were processed independently."
    )
    for run in runs:
        workflow.add_nodes([init_qalas_wf(run=run, settings=settings)])
    return workflow
