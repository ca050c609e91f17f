"""Data package: the config JSON schema (read by dae_py.compiler.schema)."""
