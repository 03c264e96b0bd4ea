"""Orchestration of an invocation, between the command line and the workflows.

``participant`` runs the checks before any work (``prework``), builds and runs the nipype
workflow (``nipype_run``) and finishes with the boilerplate, the post-fit QC gate and the
reports (``finish``); ``group`` runs the group level. The command line
(:mod:`qalas_bids.cli.run`) only parses, sets up logging and dispatches here. May import
every layer except ``qalas_bids.cli``.
"""
