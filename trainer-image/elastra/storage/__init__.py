"""Storage tiers behind one narrow protocol: local files and S3. URIs are `str`."""
