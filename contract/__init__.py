"""The contract between the compiler and the runtime: the only package both import.

It depends on neither half. The compiler writes a build through it; the runtime reads a build
through it. See docs/architecture.md.
"""
