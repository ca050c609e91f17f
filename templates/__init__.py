"""Data package: the Jinja templates of the generated BPF C (read by dae_py.compiler.emit)."""
