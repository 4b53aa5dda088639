"""Shared basics every other layer builds on: typed errors and :func:`~deploykit.core.errors.first_line`,
atomic writes, staging directories and sha256 (:mod:`.io`), ONNX load/save/metadata with one error type
(:mod:`.onnx_io`), export configs and tolerances (:mod:`.config`), artifact kinds (:mod:`.artifacts`), the
module scopes carried on ONNX nodes (:mod:`.scopes`), the one-line rule for class names and the label-file
format (:mod:`.labels`) and the schema of every file deploykit reads (:mod:`.schema`).

Owns: the things more than one layer needs and that need neither torch nor a runtime.
May import: the standard library, numpy and onnx only (no other deploykit package, never torch)."""
