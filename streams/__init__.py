"""chargemesh.streams."""
