"""Cross-cutting backend machinery: settings, database, errors, logging, security."""
