"""dae's native config format (`.dae`): parsed with a lark grammar, mapped onto this project's
config structure, and translated to YAML (`dae-compile --to-yaml`). See docs/dae-format.md."""
from .loader import load_dae_text, looks_like_dae, map_dae_text
from .to_yaml import to_yaml

__all__ = ["load_dae_text", "looks_like_dae", "map_dae_text", "to_yaml"]
