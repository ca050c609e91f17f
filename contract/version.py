"""Version and format numbers shared by the compiler (which writes them) and the runtime (which
checks them): a build is only valid for a runtime that understands its manifest and map layouts,
so both halves read these from one place."""
from __future__ import annotations

#: The compiler's version, recorded in every manifest and printed by `dae-compile --version`.
COMPILER_VERSION = "0.1.0"
#: The manifest.json format; the runtime refuses a build of another format (recompile it).
MANIFEST_FORMAT = 1
