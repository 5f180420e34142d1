"""``hostgate demo``: the pipeline's four stages and a simulated fleet in one command."""
