"""Parts of `sdparity check` below the runner: localization, op replay, the own-kernel check."""
