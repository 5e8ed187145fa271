"""Driver plugins, one subpackage per device family (see each one's README.md)."""
