"""Per-image metrics under both protocols (metrics), the evaluate stage (evaluate), and the statistics the
report's paired comparisons rest on (statistics: two-stage bootstrap, Holm)."""
