"""The shipped default artifact (metro-traffic), installed with the package as `dil.engines`."""
