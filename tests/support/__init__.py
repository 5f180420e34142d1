"""Test-only code the product does not ship: the runtime's exactly-once test stage
(``eostest``), evidence records built from simulator hosts as the collector would write them
(``simulated_evidence``) and evidence signed by a fixed software AK for byte-reproducible
verdicts (``soft_evidence``). Tests and benchmarks import it; ``services`` never does."""
