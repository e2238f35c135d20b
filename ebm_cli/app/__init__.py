"""The command-line application: entry point, pre-flight checks, resume, run directories,
sweeps and config validation. Nothing here is mathematics."""
