"""Processing a series: eligibility, assembly, conditioning, synthesis, encoding."""
