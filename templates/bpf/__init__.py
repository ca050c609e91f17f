"""The BPF C templates and headers; data, not Python."""
