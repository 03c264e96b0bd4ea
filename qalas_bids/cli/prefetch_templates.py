"""qalas-bids-prefetch-templates: fill a TemplateFlow home for offline runs.

qalas-bids never downloads at run time. Run this once on a machine with network access
(a login node, the Docker build) and point the runs at the home with TEMPLATEFLOW_HOME:

    qalas-bids-prefetch-templates MNIInfant:cohort-1 MNI152NLin6Asym:res-2 --atlases HOCPA:desc-th25

Each output space (``--output-spaces`` grammar) gets its brain mask, T1w (brain-extracted where
TemplateFlow has one) and WM probability map, at the given resolution or at every resolution
of the template; ``--atlases`` TemplateFlow atlases of those templates are fetched with their
label tables. ``--local`` instead writes the shipped MNI152NLin2009cAsym files (no network),
which is what an offline image build uses.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..qalas.errors import QalasInputError


def template_queries(space, atlases=()) -> list[dict]:
    """``templateflow.api.get`` keyword sets for one ``OutputSpace`` (``res`` None or "native":
    every resolution of the template/cohort) and the TemplateFlow ``atlases`` (AtlasRequest)."""
    from ..bids.output_spaces import _template_resolutions

    resolutions = ([space.res] if space.res not in (None, "native")
                   else sorted(_template_resolutions(space.name, space.cohort), key=int))
    base = {"template": space.name, **({"cohort": space.cohort} if space.cohort else {})}
    queries = []
    for res in resolutions:
        at = {**base, "resolution": int(res), "extension": ".nii.gz"}
        queries += [{**at, "desc": "brain", "suffix": "mask"}, {**at, "desc": "brain", "suffix": "T1w"},
                    {**at, "desc": None, "suffix": "T1w"}, {**at, "label": "WM", "suffix": "probseg"}]
        queries += [{**at, "atlas": a.name, "desc": a.desc, "suffix": "dseg"} for a in atlases if a.is_templateflow]
    queries += [{"template": space.name, "atlas": a.name, "desc": a.desc, "suffix": "dseg", "extension": ".tsv"}
                for a in atlases if a.is_templateflow]
    return queries


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qalas-bids-prefetch-templates", description=__doc__.splitlines()[2],
                                     epilog=__doc__.split("\n\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spaces", nargs="*", metavar="SPACE[:MOD-VAL]",
                        help="TemplateFlow output spaces, e.g. MNI152NLin2009cAsym MNIInfant:cohort-1")
    parser.add_argument("--atlases", nargs="+", default=[], metavar="NAME[:desc-DESC]",
                        help="TemplateFlow atlases of those templates (as qalas-bids --atlases)")
    parser.add_argument("--home", type=Path, default=None,
                        help="TemplateFlow home to fill (default: $TEMPLATEFLOW_HOME, else templateflow's cache)")
    parser.add_argument("--local", action="store_true",
                        help="write the shipped MNI152NLin2009cAsym files into --home (no network)")
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    from ..bids.atlases import check_atlases, parse_atlas
    from ..bids.output_spaces import parse_output_spaces
    from ..bids.templates import build_local_home, user_template_home

    home = (opts.home or user_template_home()).expanduser().resolve()
    if opts.local:
        build_local_home(home)
        (home / ".qalas-bids-local-home").unlink()  # a real home: qalas-bids serves from it directly
        print(f"wrote the shipped MNI152NLin2009cAsym files to {home}")
        return 0
    try:
        spaces = [s for s in parse_output_spaces(opts.spaces) if s.is_template]
        if not spaces:
            raise QalasInputError("name at least one TemplateFlow template (or pass --local)")
        atlases = check_atlases([parse_atlas(a) for a in opts.atlases], spaces) if opts.atlases else []
    except QalasInputError as exc:
        print(f"qalas-bids-prefetch-templates: error: {exc}", file=sys.stderr)
        return 2
    os.environ["TEMPLATEFLOW_HOME"] = str(home)
    os.environ["TEMPLATEFLOW_AUTOUPDATE"] = "0"
    from templateflow import api

    for space in spaces:
        for query in template_queries(space, atlases):
            found = api.get(**query)
            files = found if isinstance(found, list) else [found]
            print(f"{space}: {len(files)} file(s) for {query}")
    print(f"TemplateFlow home ready: {home} (run qalas-bids with TEMPLATEFLOW_HOME={home})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
