"""chargemesh.schemas."""
