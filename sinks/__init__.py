"""chargemesh.sinks."""
