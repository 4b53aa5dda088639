"""What each command does, end to end, returning what it made (only the command line prints): the export
(:mod:`.export`: request, stages, manifest, report, atomic publish), the CI gate (:mod:`.validate`),
failure location (:mod:`.locate`), ``predict`` (:mod:`.predict`), ``bench`` (:mod:`.bench`), the engine
step of ``export`` and ``build`` (:mod:`.build`) and ``list``/``inspect`` (:mod:`.info`).

Owns: orchestration: which transforms run in which order, what gets compared, what gets written.
May import: core, models, runtime, validation, transforms, engine."""
