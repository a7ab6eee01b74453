"""Storage: run directories, the stage cache, checkpoints, atomic files, the event log and event sinks."""
