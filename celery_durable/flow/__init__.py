"""Flow control decisions, pure: keys and the GCRA. ``admission`` applies them to the database."""
