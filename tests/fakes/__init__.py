"""Faithful fakes of third-party SDKs (e2b, modal) for tests without network."""
