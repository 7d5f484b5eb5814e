# Rules for the two-stage family (filled in by its issue).
