# Rules for the statistical family (filled in by its issue).
