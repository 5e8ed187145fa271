"""A key manager (KME) speaking ETSI GS QKD 014 over HTTPS with mutual TLS (status calls)."""
