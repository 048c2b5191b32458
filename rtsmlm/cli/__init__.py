"""Command-line entry points: ``rtsmlm`` (:mod:`.main`) and its subcommands (one module each).

Every command returns an exit code and reports user errors as one line (:func:`.main.main`)."""
