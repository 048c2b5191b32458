"""The domain core every stage shares: the typed config (:mod:`.config`), the localization table and
stream (:mod:`.locs`), the camera model (:mod:`.camera`), JSON output (:mod:`.jsonio`) and the user-facing
error base (:mod:`.errors`). Imports nothing else of rtsmlm."""
