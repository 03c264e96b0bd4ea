"""What a fit without a B1+ map costs: the expected bias per 10 % of B1 error.

Plain constants and text (no torch) so that ``--help``, the pairing errors, the sidecars
and the report can state them cheaply; the numbers come from
:func:`qalas_bids.qalas.b1.identifiability.no_b1_bias` and a test recomputes them.
"""
from __future__ import annotations

#: Fitted-map bias (percent) of a ``--no-b1`` fit (B1 assumed 1) when the true B1 is 0.9
#: or 1.1: :func:`~qalas_bids.qalas.b1.identifiability.no_b1_bias` (Siemens timing, WM/GM
#: of the digital brain, noiseless), rounded to 0.1 %. Stated by ``--help``, the sidecars and the report of a ``--no-b1`` run;
#: ``tests/test_b1_kinds.py`` recomputes it. Keys: true B1 -> tissue -> map -> percent.
NO_B1_BIAS_PER_10_PERCENT = {
    0.9: {"WM": {"T1": 5.9, "T2": 5.0, "PD": -5.2}, "GM": {"T1": 9.8, "T2": 4.6, "PD": -1.8}},
    1.1: {"WM": {"T1": -5.8, "T2": 3.8, "PD": 4.3}, "GM": {"T1": -9.0, "T2": 3.2, "PD": 0.8}},
}


def no_b1_bias_text(table: dict[float, dict[str, dict[str, float]]] | None = None) -> str:
    """One sentence stating the expected bias per 10 % of B1 error (for help, sidecars, report)."""
    table = table or NO_B1_BIAS_PER_10_PERCENT
    cases = []
    for b1, bias in table.items():
        cells = ", ".join(f"{t} T1 {v['T1']:+.1f} % T2 {v['T2']:+.1f} % PD {v['PD']:+.1f} %"
                          for t, v in bias.items())
        cases.append(f"true B1 {b1:g}: {cells}")
    return ("fitted with B1 = 1 (no B1 map); expected bias per 10 % of B1 error: " + "; ".join(cases)
            + " (QALAS alone cannot measure B1: docs/methods.md 7c)")
