"""Seeds: the passages, Q&A pairs and code that recipes start from (sources), and seed curation:
passage scoring and a topic-balanced pick (curate)."""
