"""chargemesh.infra."""
