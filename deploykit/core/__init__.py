"""Shared basics every other package builds on: typed errors (:mod:`.errors`), atomic writes, staging
directories and sha256 (:mod:`.io`), ONNX load/save with one error type (:mod:`.onnx_io`), export configs and
tolerances (:mod:`.config`), artifact kinds and variants (:mod:`.artifacts`), the artifact record — the one
place that spells and parses an artifact's metadata, sidecar and manifest (:mod:`.record`) — the module
scopes carried on ONNX nodes (:mod:`.scopes`), the one-line rule for class names and the label-file format
(:mod:`.labels`), the schema checker of the files deploykit reads (:mod:`.schema`) and the optional parts
with the extra that installs each (:mod:`.parts`: a missing one is one line naming it).

Owns: the things more than one package needs and that need neither torch nor a runtime.
May import: the standard library, numpy and onnx only (no other deploykit package, never torch)."""
