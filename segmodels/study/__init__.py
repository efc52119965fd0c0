"""A study: its config, the experiment matrix, the run folders, the summary and the statistics."""
