"""dae-py: the one namespace the distribution installs.

The source tree keeps its top-level folders (`compiler/`, `runtime/`, `contract/`, `templates/`,
`schemas/`); pyproject.toml maps each under this package, so site-packages gains `dae_py` and
nothing with a generic name like `compiler` or `runtime`.
"""
