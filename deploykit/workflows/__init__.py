"""What each command does, end to end: the export pipeline (:mod:`.pipeline`: stages over one state, the
background FP16 reference in :mod:`.background`, manifest, atomic publish, :mod:`.report`), the CI gate
(:mod:`.validate`), failure location (:mod:`.locate`), ``predict`` (:mod:`.predict`) and ``bench``
(:mod:`.bench`).

Owns: orchestration: which transforms run in which order, what gets compared, what gets written.
May import: core, models, runtime, validation, transforms, engine."""
