"""What is computed from the fitted maps: masks, tissue classes, summaries, synthetic images.

Belongs here: the head mask (from the QALAS contrasts) and brain mask (from the maps),
tissue classification and robust tissue values, fluid shrinkage, synthetic contrasts,
repeatability statistics, and (per-region) statistics of maps inside labels. Must not:
fit, read files, or know which atlas file a label volume came from.
"""
