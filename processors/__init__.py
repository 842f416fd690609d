"""chargemesh.processors."""
