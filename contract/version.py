"""The compiler's version, recorded in every manifest (a build is only valid for the runtime
that understands its map layouts)."""
COMPILER_VERSION = "0.1.0"
MANIFEST_FORMAT = 1
