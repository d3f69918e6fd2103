"""Device discovery, profiles and execution backends (the placement issue builds them)."""
