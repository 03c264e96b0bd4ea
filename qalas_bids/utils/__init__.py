"""Plain helpers of the app layer (no nipype imports)."""
